# The Weflux API and worker image (see docker-compose.yml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY weflux ./weflux
COPY migrations ./migrations
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app weflux
COPY --from=build /install /usr/local
WORKDIR /app
USER weflux
ENV WEFLUX_ENV=production WEFLUX_VAR_DIR=/app/var PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["weflux", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
