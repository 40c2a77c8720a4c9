"""The DataLoaders find their rows by key: a page's messages, contacts, conversations,
memberships, media files and numbers are each looked up by primary key, never by
walking the workspace's `org_id` index (which SQLite, with no statistics, preferred to a
list of keys: every message of the workspace for each page's last messages)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlmodel import col, select

from tests.fixtures.factories import Actor, create_actor
from tests.fixtures.plans import big_workspace, explained, prefer_indexes
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.gql.loaders import Loaders
from weflux.models import (
    Contact,
    Conversation,
    MediaFile,
    Membership,
    Message,
    Organization,
    Role,
    WhatsAppAccount,
)

KEYED: list[tuple[str, Any]] = [
    ("message", Message),
    ("contact", Contact),
    ("conversation", Conversation),
    ("membership", Membership),
    ("media_file", MediaFile),
    ("whatsapp_account", WhatsAppAccount),
]
# The tables with many rows in this workspace: PostgreSQL, which plans by statistics,
# rightly reads a handful of rows (members, numbers) by any index.
LARGE = ("messages", "contacts", "conversations")


def _by_key(plan: list[str], table: str) -> bool:
    """Whether `plan` reads `table` by its primary key alone (SQLite: a SEARCH on `id`;
    PostgreSQL, sequential scans off: an index condition on `id`)."""
    if plan and re.match(r"^-?\d+:-?\d+:", plan[0]):
        steps = [line.split(":", 2)[2] for line in plan]
        own = [s for s in steps if re.match(rf"^(SCAN|SEARCH) {table}\b", s)]
        return bool(own) and all(re.search(r"\(id=\?\)$", s) for s in own)
    # PostgreSQL: the node that reads `table` itself (not an alias of it), and its
    # conditions (the lines indented below it) search by `id`.
    found = False
    for n, line in enumerate(plan):
        scan = re.search(rf"(Scan|Scan using \w+) on {table}(?: {table})?  \(", line)
        if scan is None:
            continue
        if "Seq Scan" in line:
            return False
        depth = len(line) - len(line.lstrip())
        below = []
        for after in plan[n + 1 :]:
            if len(after) - len(after.lstrip()) <= depth:
                break
            below.append(after)
        if not any("Cond: (id = ANY (" in cond for cond in below):
            return False
        found = True
    return found


@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_each_loader_reads_its_rows_by_key(
    db: Database, owner_db: Database, org: Organization, agent: Actor, role: str
) -> None:
    """Given a workspace of 2,000 messages in 1,000 conversations (and its numbers,
    members, media files),
    when a page's loaders load a few rows each (as an Admin, as an Agent),
    then each statement finds its rows by primary key: no step walks the workspace."""
    # 1,000 contacts: at 120, PostgreSQL rightly read all of them through the workspace's
    # trigram index (migration 0025, `org_id` first) rather than probe the key three times.
    messages = await big_workspace(db, owner_db, org.id, conversations=1000, messages_each=2)
    async with db.session(org.id) as session:
        for _ in range(3):
            await create_actor(session, Role.MANAGER)
        rows = {
            "message": [m.id for m in messages[:3]],
            "contact": list((await session.exec(select(col(Contact.id)).limit(3))).all()),
            "conversation": list((await session.exec(select(col(Conversation.id)).limit(3))).all()),
            "membership": list((await session.exec(select(col(Membership.id)).limit(3))).all()),
            "whatsapp_account": list(
                (await session.exec(select(col(WhatsAppAccount.id)).limit(3))).all()
            ),
        }
    rows["media_file"] = rows["message"]  # no files: the plan is what counts
    async with owner_db.engine.connect() as connection:
        if connection.dialect.name == "postgresql":  # every table's statistics
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("ANALYZE")
    sqlite = db.engine.dialect.name == "sqlite"
    for name, model in KEYED:
        table = str(model.__tablename__)
        if not sqlite and table not in LARGE:
            continue  # PostgreSQL reads a few rows by whichever index its statistics favour
        async with db.session(org.id) as session:
            if role == "agent":
                restrict_to_agent(session, agent.membership.id)
            await prefer_indexes(await session.connection())
            loaders = Loaders(lambda session=session: session)  # type: ignore[misc]
            with explained(db) as plans:
                await getattr(loaders, name).load_many(rows[name])
            assert plans, name
            assert _by_key(plans[0], table), f"{name}:\n" + "\n".join(plans[0])


async def test_a_loader_by_key_still_finds_nothing_of_another_workspace(
    db: Database, org: Organization, other_org: Organization, agent: Actor, other_org_agent: Actor
) -> None:
    """Given a message, its conversation and contact in each of two workspaces (and the
    workspaces' members),
    when one workspace's loaders (an Admin's, an Agent's) load both workspaces' ids,
    then the other workspace's rows load as None: the workspace criterion holds in a
    read by key, only its index is not chosen."""
    mine = (await big_workspace(db, db, org.id, conversations=2, messages_each=1, erased=0))[0]
    theirs = (
        await big_workspace(db, db, other_org.id, conversations=2, messages_each=1, erased=0)
    )[0]
    async with db.session(org.id) as session:
        conversation = await session.get(Conversation, mine.conversation_id)
        assert conversation is not None
    async with db.session(other_org.id) as session:
        foreign = await session.get(Conversation, theirs.conversation_id)
        assert foreign is not None
    pairs = [
        ("message", mine.id, theirs.id),
        ("conversation", conversation.id, foreign.id),
        ("contact", conversation.contact_id, foreign.contact_id),
        ("membership", agent.membership.id, other_org_agent.membership.id),
    ]
    for role in ("admin", "agent"):
        for name, own, other in pairs:
            async with db.session(org.id) as session:
                if role == "agent":
                    restrict_to_agent(session, agent.membership.id)
                loaders = Loaders(lambda session=session: session)  # type: ignore[misc]
                loaded = await getattr(loaders, name).load_many([own, other])
            assert loaded[0] is not None, (role, name)
            assert loaded[0].id == own, (role, name)
            assert loaded[1] is None, (role, name)
