"""What one status webhook costs as the workspace grows.

    .venv/bin/python -m bench.status_webhook [--database-url URL] [--messages 20000]
        [--conversations 2000] [--erased 5] [--posts 300]

A workspace of `--messages` sent outbound messages spread over `--conversations`
conversations (`--erased` of them erased), then `--posts` one-status webhooks
(`delivered`, each for another message), signed like Meta signs, POSTed in-process; the
whole path is measured (signature, raw body, parsing, routing, the status lookup and
UPDATE, the event's row, commit). Prints the median and 90th percentile time per webhook
and the process's CPU per webhook. Run it at two sizes: a bounded webhook costs the same.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from weflux.app import create_app
from weflux.config import generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import (
    Contact,
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    Organization,
    WhatsAppAccount,
    utcnow,
)

SECRET = "bench-app-secret-0123456789"  # noqa: S105  (a benchmark's throwaway)


async def _workspace(db: Database, args: argparse.Namespace) -> tuple[uuid.UUID, list[str]]:
    """The workspace; the wamids of its messages that are not in an erased conversation."""
    org = Organization(name="Bench")
    async with db.session(org.id) as session:
        session.add(org)
        await session.flush()
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=wh.PHONE_NUMBER_ID,
            business_account_id=wh.WABA_ID,
            webhook_key=f"bench-{org.id.hex}",
            credentials_updated_at=utcnow(),
        )
        session.add(account)
        contacts = [
            Contact(org_id=org.id, wa_id=f"4930{n:08d}", name=f"C {n}")
            for n in range(args.conversations)
        ]
        session.add_all(contacts)
        await session.flush()
        conversations = [
            Conversation(
                org_id=org.id,
                contact_id=contact.id,
                account_id=account.id,
                erased_at=utcnow() if n < args.erased else None,
            )
            for n, contact in enumerate(contacts)
        ]
        session.add_all(conversations)
        await session.flush()
    visible: list[str] = []
    per_batch = 5000
    for start in range(0, args.messages, per_batch):
        async with db.session(org.id) as session:
            for n in range(start, min(start + per_batch, args.messages)):
                conversation = n % args.conversations
                wamid = f"wamid.BENCH{n:010d}"
                session.add(
                    Message(
                        org_id=org.id,
                        conversation_id=conversations[conversation].id,
                        direction=MessageDirection.OUTBOUND,
                        type="text",
                        text="reply",
                        status=MessageStatus.SENT,
                        wa_message_id=wamid,
                    )
                )
                if conversation >= args.erased:
                    visible.append(wamid)
    return org.id, visible


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--erased", type=int, default=5)
    parser.add_argument("--posts", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
    await migrate(url)
    settings = load_settings(
        _env_file=None,
        env="test",
        var_dir=workdir / "var",
        database_url=url,
        jwt_secret="b" * 40,
        encryption_keys=generate_encryption_key_entry("b1"),
        meta_app_secret=SECRET,
        in_process_worker=False,
        log_level="WARNING",
    )
    db = Database(url)
    org_id, wamids = await _workspace(db, args)
    if db.engine.dialect.name == "postgresql":  # statistics, as autovacuum gathers them
        async with db.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("ANALYZE conversations, messages")
    await db.dispose()
    chosen = random.Random(7).sample(wamids, args.posts + 20)  # noqa: S311  (not a secret)
    bodies = []
    for wamid in chosen:
        body = wh.encode(wh.webhook_body(wh.messages_change(statuses=[wh.status(wamid)])))
        bodies.append((body, {"X-Hub-Signature-256": wh.sign(body, SECRET)}))
    app = create_app(settings)
    durations = []
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meta") as client:
            for body, headers in bodies[:20]:  # warm-up: routes cached, statements compiled
                response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
                assert response.status_code == 200, response.text
            cpu = time.process_time()
            for body, headers in bodies[20:]:
                started = time.perf_counter()
                response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
                durations.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            cpu = time.process_time() - cpu
    db = Database(url)
    async with db.session(org_id) as session:
        delivered = await session.scalar(
            select(func.count()).where(col(Message.status) == MessageStatus.DELIVERED)
        )
    await db.dispose()
    assert delivered == len(bodies), f"{delivered} of {len(bodies)} delivered"
    durations.sort()
    print(
        f"{url.split(':')[0]}: {args.messages:,} messages in {args.conversations:,} "
        f"conversations ({args.erased} erased), {args.posts} one-status webhooks: "
        f"median {statistics.median(durations) * 1000:.2f} ms, "
        f"p90 {durations[int(len(durations) * 0.9)] * 1000:.2f} ms, "
        f"process CPU {cpu / args.posts * 1000:.2f} ms per webhook"
    )


if __name__ == "__main__":
    asyncio.run(main())
