"""How many inbound messages per second one process absorbs through the webhook.

    .venv/bin/python -m bench.webhook_ingest [--database-url URL] [--posts 5] [--size 1000]

Each POST carries `--size` messages from distinct senders (new contacts, conversations
and messages: the expensive case), signed like Meta signs. The whole path is measured:
signature check, durable write of the raw body, parsing, routing, bulk writes, commit.
Meta's top tier is 1,000 messages/s per number.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from tests.fixtures import webhooks as wh
from weflux.app import create_app
from weflux.config import Settings, generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import Organization, WhatsAppAccount, utcnow

SECRET = "bench-app-secret-0123456789"  # noqa: S105  (a benchmark's throwaway)


async def bench_workspace(database_url: str | None) -> tuple[Settings, Database, WhatsAppAccount]:
    """A migrated database (a new SQLite file unless `database_url`), the app's settings
    for it (webhooks signed with `SECRET`), and a workspace with the number the factory's
    webhooks name; the caller disposes of the database handle."""
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-"))
    url = database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
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
    org = Organization(name="Bench")
    account = WhatsAppAccount(
        org_id=org.id,
        display_phone_number=wh.DISPLAY_PHONE_NUMBER,
        phone_number_id=wh.PHONE_NUMBER_ID,
        business_account_id=wh.WABA_ID,
        webhook_key=f"bench-{org.id.hex}",
        credentials_updated_at=utcnow(),
    )
    async with db.session(org.id) as session:
        session.add(org)
        await session.flush()
        session.add(account)
    return settings, db, account


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--posts", type=int, default=5)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    settings, db, _ = await bench_workspace(args.database_url)
    url = settings.database_url
    await db.dispose()
    app = create_app(settings)
    durations = []
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meta") as client:
            for post in range(args.posts):
                senders = [f"1{post:03d}{n:07d}" for n in range(args.size)]
                body = wh.encode(
                    wh.webhook_body(
                        wh.messages_change(
                            messages=[wh.text_message(from_wa_id=s, body="hi") for s in senders],
                            contacts=[wh.contact(wa_id=s, name=f"C {s}") for s in senders],
                        )
                    )
                )
                headers = {"X-Hub-Signature-256": wh.sign(body, SECRET)}
                started = time.perf_counter()
                response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
                durations.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    per_post = statistics.median(durations)
    print(
        f"{url.split(':')[0]}: {args.size} messages per POST, median {per_post * 1000:.0f} ms "
        f"-> {args.size / per_post:,.0f} messages/s (runs: "
        + ", ".join(f"{d * 1000:.0f}" for d in durations)
        + " ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
