"""Erasing a contact with many messages: the tombstone at once, then the worker's deletion.

    .venv/bin/python -m bench.erasure [--messages 10000] [--batch 500] [--database-url URL]

On a fresh migrated database (SQLite unless `--database-url`, which must be empty and
owned by its user) it creates a workspace with one contact holding `--messages` messages
in one conversation, 200 raw webhook bodies (a tenth of them naming the contact), and a
second contact of 1,000 messages that must stay. It then times:

- `eraseContact`'s own transaction (the tombstone: hidden everywhere at once);
- the worker's run to COMPLETED (bodies, messages in batches of `--batch`, the rest);

and checks that the other contact's messages are all there afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
import uuid
from pathlib import Path

from sqlmodel import select

from tests.fixtures.factories import create_actor, create_contact, create_conversation, create_org
from tests.fixtures.principals import principal_of
from weflux.auth import passwords
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.migrate import migrate
from weflux.models import (
    DataRequest,
    Message,
    MessageDirection,
    MessageStatus,
    Role,
    WebhookEvent,
    WebhookEventStatus,
    new_id,
    utcnow,
)
from weflux.services.audit import RequestMeta

BODIES = 200
OTHER_MESSAGES = 1000


async def _messages(
    db: Database, org_id: uuid.UUID, conversation_id: uuid.UUID, count: int
) -> None:
    for start in range(0, count, 1000):
        async with db.session(org_id) as session:
            session.add_all(
                Message(
                    id=new_id(),
                    org_id=org_id,
                    conversation_id=conversation_id,
                    direction=MessageDirection.INBOUND,
                    type="text",
                    text=f"message {n}",
                    status=MessageStatus.RECEIVED,
                )
                for n in range(start, min(count, start + 1000))
            )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
    passwords.BCRYPT_ROUNDS = 4
    await migrate(url)
    db = Database(url)
    async with db.session() as session:
        org = await create_org(session, name="Bench")
        admin = await create_actor(session, Role.ADMIN)
        contact = await create_contact(session, wa_id="4915100000001")
        conversation = await create_conversation(session, contact=contact)
        kept = await create_conversation(session)
    await _messages(db, org.id, conversation.id, args.messages)
    await _messages(db, org.id, kept.id, OTHER_MESSAGES)
    for n in range(BODIES):
        event_id = uuid.uuid4()
        wa_id = contact.wa_id if n % 10 == 0 else f"49151{n:08d}"
        body = f'{{"contacts":[{{"wa_id":"{wa_id}"}}],"n":{n}}}'.encode()
        async with db.session(webhook_event=event_id) as session:
            session.add(
                WebhookEvent(
                    id=event_id,
                    body=body,
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    status=WebhookEventStatus.PROCESSED,
                    processed_at=utcnow(),
                )
            )

    started = time.perf_counter()
    async with db.session(org.id) as session:
        request = await lifecycle_requests.erase_contact(
            session, principal_of(admin), RequestMeta(), contact_id=contact.id
        )
    tombstone = time.perf_counter() - started
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("b1", os.urandom(32))]), batch=args.batch)
    started = time.perf_counter()
    await run_due_requests(lifecycle)
    purge = time.perf_counter() - started

    async with db.session(org.id) as session:
        done = await session.get(DataRequest, request.id)
        left = len((await session.exec(select(Message.id))).all())
    assert done is not None
    assert done.status == "COMPLETED", done.status
    assert left == OTHER_MESSAGES, left
    await db.dispose()
    print(f"database: {db.dialect}; {args.messages} messages, batches of {args.batch}")
    print(f"eraseContact transaction (tombstone): {tombstone * 1000:.1f} ms")
    print(f"worker to COMPLETED: {purge:.2f} s ({args.messages / purge:,.0f} messages/s)")


if __name__ == "__main__":
    asyncio.run(main())
