"""The inbox counts' statement on a large PostgreSQL inbox: its plan and its time.

    .venv/bin/python -m bench.inbox_counts [--workspaces 5] [--conversations 20000]

On a fresh clone of the test cluster's migrated template (the app's restricted role,
row-level security on, as in production) it fills `--workspaces` workspaces with
`--conversations` conversations each (twenty members, statuses and unread counts spread,
one in a hundred erased), runs VACUUM ANALYZE (as autovacuum would), then counts as an
Admin and as an Agent through their scoped sessions and prints, for each, the
statement's EXPLAIN (ANALYZE, BUFFERS) and the median of twenty counts. The plan should
read `Index Only Scan using ix_conversations_inbox_counts` (or a bitmap scan of it for
the Agent's two assignee values); a `Seq Scan on conversations` means it is not used.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncSession

from tests.fixtures.databases import PostgresTemplate
from tests.fixtures.factories import create_actor, create_org, create_whatsapp_account
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import Contact, Conversation, ConversationStatus, Role, new_id, utcnow
from weflux.services.inbox_counts import tally

MEMBERS = 20
RUNS = 20


async def _fill(db: Database, conversations: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """One workspace; answers its id, its Admin's and one Agent's membership ids."""
    rng = random.Random(7)  # noqa: S311  (a reproducible spread, not a secret)
    async with db.session() as session:
        org = await create_org(session)
        account = await create_whatsapp_account(session)
        admin = await create_actor(session, Role.ADMIN)
        agents = [await create_actor(session, Role.AGENT) for _ in range(MEMBERS - 1)]
    members = [admin.membership.id] + [a.membership.id for a in agents]
    now = utcnow()
    for start in range(0, conversations, 5000):
        size = min(5000, conversations - start)
        contacts = [{"id": new_id(), "wa_id": f"{rng.randrange(10**11):011d}"} for _ in range(size)]
        rows = [
            {
                "id": new_id(),
                "contact_id": c["id"],
                "account_id": account.id,
                "status": rng.choice(list(ConversationStatus)),
                "assignee_membership_id": rng.choice([None, *members]),
                "unread_count": rng.choice([0, 0, 0, 1, 3]),
                "created_at": now,
                "updated_at": now,
                "erased_at": now if rng.random() < 0.01 else None,
            }
            for c in contacts
        ]
        async with db.session(org.id) as session:
            await session.execute(insert(Contact), contacts)
            await session.execute(insert(Conversation), rows)
    return org.id, admin.membership.id, agents[0].membership.id


async def _measure(db: Database, org_id: uuid.UUID, agent: uuid.UUID | None, label: str) -> None:
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "count(" in statement:
            statements.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    times: list[float] = []
    for _ in range(RUNS):
        async with db.session(org_id) as session:
            if agent is not None:
                restrict_to_agent(session, agent)
            started = time.perf_counter()
            await tally(session)
            times.append(time.perf_counter() - started)
    event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    statement, parameters = statements[-1]
    async with db.session(org_id) as session:
        plan = await _explain(session, statement, parameters)
    print(f"--- {label}: median {statistics.median(times) * 1000:.2f} ms over {RUNS} counts")
    print(statement)
    print("\n".join(plan))


async def _explain(session: AsyncSession, statement: str, parameters: Any) -> list[str]:
    connection = await session.connection()
    result = await connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
    return [str(row[0]) for row in result]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=20000)
    args = parser.parse_args()
    template = PostgresTemplate()
    await template.build()
    urls = await template.clone()
    db = Database(urls.app)
    owner = Database(urls.owner, maintenance=True)
    try:
        filled = [await _fill(db, args.conversations) for _ in range(args.workspaces)]
        # What autovacuum keeps up in production: statistics and the visibility map (which
        # lets an index-only scan skip the table).
        async with owner.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE conversations")
        org_id, _, agent = filled[0]
        await _measure(db, org_id, None, "Admin (every conversation of the workspace)")
        await _measure(db, org_id, agent, "Agent (their own and unassigned ones)")
    finally:
        await db.dispose()
        await owner.dispose()
        template.drop_later(urls)
        template.destroy()


if __name__ == "__main__":
    asyncio.run(main())
