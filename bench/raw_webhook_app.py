"""The floor of `bench.webhook`: a bare Starlette endpoint doing the minimum of a webhook.

    BENCH_FLOOR_DATABASE_URL=... BENCH_FLOOR_SECRET=... \
        .venv/bin/python -m uvicorn bench.raw_webhook_app:app --port 8002

`POST /webhook` reads the body, checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw
bytes, constant time) and INSERTs the raw body into `bench_floor_webhooks` in its own
transaction (SQLAlchemy Core over the same drivers and SQLite pragmas as weflux), then
answers 200. No parsing, no routing, no scoping. The table is created by the benchmark.

With `BENCH_FLOOR_REDIS_URL` and `BENCH_FLOOR_CHANNEL` set (`bench.crossprocess`), it also
PUBLISHes the new row's id on that channel after the commit, before answering, and
answers with the id: process A of the work-alike floor across processes (process B is
`bench.raw_ws_app`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

from redis.asyncio import Redis
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, event
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from weflux.sqlite_driver import driver_options

metadata = MetaData()
webhooks = Table(
    "bench_floor_webhooks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("body", LargeBinary, nullable=False),
)

SECRET = os.environ.get("BENCH_FLOOR_SECRET", "").encode()
URL = os.environ.get("BENCH_FLOOR_DATABASE_URL", "sqlite+aiosqlite://")
# weflux's own SQLite driver (one thread hand-off per statement), as weflux.db uses it.
engine = create_async_engine(URL, **driver_options(URL))
CHANNEL = os.environ.get("BENCH_FLOOR_CHANNEL", "")
redis = Redis.from_url(os.environ["BENCH_FLOOR_REDIS_URL"]) if CHANNEL else None
if engine.dialect.name == "sqlite":

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=15000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()


async def webhook(request: Request) -> PlainTextResponse:
    body = await request.body()
    header = request.headers.get("x-hub-signature-256", "")
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, header):
        return PlainTextResponse("Invalid signature", status_code=401)
    row_id = str(uuid.uuid4())
    async with engine.begin() as connection:
        await connection.execute(webhooks.insert().values(id=row_id, body=body))
    if redis is None:
        return PlainTextResponse("OK", headers={"Cache-Control": "no-store"})
    await redis.publish(CHANNEL, row_id)
    return PlainTextResponse(row_id, headers={"Cache-Control": "no-store"})


async def ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("OK")


app = Starlette(routes=[Route("/webhook", webhook, methods=["POST"]), Route("/readyz", ready)])
