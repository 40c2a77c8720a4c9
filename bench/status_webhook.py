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
import time

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func
from sqlmodel import col, select

from bench.webhook_ingest import SECRET, bench_workspace
from tests.fixtures import webhooks as wh
from tests.fixtures.plans import analyze, sent_messages
from weflux.app import create_app
from weflux.db import Database
from weflux.models import Message, MessageStatus


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--erased", type=int, default=5)
    parser.add_argument("--posts", type=int, default=300)
    args = parser.parse_args()
    settings, db, account = await bench_workspace(args.database_url)
    url, org_id = settings.database_url, account.org_id
    messages, erased = await sent_messages(
        db,
        account,
        conversations=args.conversations,
        messages_each=args.messages // args.conversations,
        erased=args.erased,
    )
    wamids = [str(m.wa_message_id) for m in messages if m.conversation_id not in erased]
    async with db.engine.connect() as connection:
        await analyze(connection)
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
