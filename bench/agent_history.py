"""What an Agent's read of one conversation's history costs as the workspace grows.

    .venv/bin/python -m bench.agent_history [--database-url URL] [--conversations 20000]
        [--messages-each 2] [--reads 200]

A workspace of `--conversations` conversations (a third assigned to the Agent, a third
to another Agent, the rest to nobody), each with `--messages-each` messages; then
`--reads` history reads (`list_messages`, the latest page) as the Agent, each of another
visible conversation, each in its own session. Prints the median and 90th percentile
time per read. Run it at two sizes: a bounded read costs the same.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from sqlalchemy import update
from sqlmodel import col, select

from bench.webhook_ingest import bench_workspace
from tests.fixtures.factories import create_actor
from tests.fixtures.plans import analyze, sent_messages
from weflux.auth.scoping import restrict_to_agent
from weflux.models import Conversation, Role
from weflux.services.conversations import list_messages


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--messages-each", type=int, default=2)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    _, db, account = await bench_workspace(args.database_url)
    org_id = account.org_id
    await sent_messages(
        db, account, conversations=args.conversations, messages_each=args.messages_each, erased=5
    )
    async with db.session(org_id) as session:
        agent = await create_actor(session, Role.AGENT, email="agent@bench.example")
        other = await create_actor(session, Role.AGENT, email="other@bench.example")
        ids = sorted((await session.exec(select(col(Conversation.id)))).all())
        for n, actor in enumerate((agent, other)):
            await session.exec(
                update(Conversation)
                .where(col(Conversation.id).in_(ids[n::3]))
                .values(assignee_membership_id=actor.membership.id)
            )
    async with db.engine.connect() as connection:
        await analyze(connection)
    async with db.session(org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        visible = (await session.exec(select(col(Conversation.id)))).all()
    chosen = random.Random(7).sample(list(visible), args.reads + 20)  # noqa: S311
    durations = []
    for n, conversation in enumerate(chosen):
        started = time.perf_counter()
        async with db.session(org_id) as session:
            restrict_to_agent(session, agent.membership.id)
            page = await list_messages(session, conversation)
        if n >= 20:  # the first reads warm the caches
            durations.append(time.perf_counter() - started)
        assert len(page.items) == args.messages_each
    await db.dispose()
    durations.sort()
    print(
        f"{db.engine.dialect.name}, {args.conversations} conversations: an Agent's history "
        f"read median {statistics.median(durations) * 1000:.2f} ms, "
        f"p90 {durations[int(len(durations) * 0.9)] * 1000:.2f} ms ({args.reads} reads)"
    )


if __name__ == "__main__":
    asyncio.run(main())
