# The Weflux API and worker image (see docker-compose.yml).
# Dependencies install exactly as locked in uv.lock, with the uv version the Makefile pins.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/venv UV_PYTHON_DOWNLOADS=never UV_PYTHON_PREFERENCE=only-system \
    UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# The dependencies first (a layer that changes only with the lock), then the project itself,
# installed as a wheel (not editable) so the Alembic scripts ship inside it.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --no-cache
COPY alembic.ini ./
COPY weflux ./weflux
COPY migrations ./migrations
RUN uv sync --frozen --no-editable --no-cache

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app weflux
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
USER weflux
ENV WEFLUX_ENV=production WEFLUX_VAR_DIR=/app/var PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["weflux", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
