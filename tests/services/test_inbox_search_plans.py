"""A search page reads its matches, not the workspace (PostgreSQL): a rare term's
contacts come from the trigram indexes (weflux_matching_contacts, migration 0025), a
common term walks the list's order; for an Admin and an Agent, first page and after a
cursor. Rows read are PostgreSQL's own counts around the page (pg_stat_xact_user_tables:
sequential and index fetches, the function's included)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.plans import InboxWorkspace, analyze, inbox_workspace
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import Role
from weflux.services.contacts import list_contacts
from weflux.services.conversations import SEARCH_CANDIDATES, list_conversations

PAGE = 20
CONVERSATIONS = 10_000
# Contacts "Contact <n>", WhatsApp ids 49<n in ten digits> (tests.fixtures.plans).
RARE = ["Contact 777", "Zebra", "0012 34"]  # 11, 0 and 1 of 10,000
COMMON = ["contact", "Contact 1"]  # all, and 1,111
# A rare term: its few matches and their conversations (before: every contact).
RARE_BOUND = 300
# A common term walks the list (an Agent's two parts, each testing one row in nine at
# worst, each row's contact probing its conversations for the Agent's visibility): a
# fifth of the workspace at most (before: all of it, then a sort); its lookup stops at
# SEARCH_CANDIDATES + 1 matches.
WALK_BOUND = 2000
LOOKUP_BOUND = SEARCH_CANDIDATES + 1
COUNTS = text(
    "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
    "FROM pg_stat_xact_user_tables WHERE relname IN ('contacts', 'conversations')"
)


@pytest.fixture
async def big_inbox(db: Database, owner_db: Database) -> InboxWorkspace:
    """10,000 conversations (tests.fixtures.plans.inbox_workspace), with statistics."""
    workspace = await inbox_workspace(db, CONVERSATIONS)
    async with owner_db.engine.connect() as connection:
        await analyze(connection, "contacts")
    return workspace


async def _read(
    db: Database, ws: InboxWorkspace, actor: Actor, term: str, *, contacts: bool, after: str | None
) -> tuple[dict[str, int], str | None]:
    """Rows of contacts and conversations one page read, and the page's end cursor."""
    async with db.session(ws.org_id) as session:
        if actor.membership.role == Role.AGENT:
            restrict_to_agent(session, actor.membership.id)
        principal = principal_of(actor)
        connection = await session.connection()
        # PostgreSQL 15 counts since its last report of statistics (up to a second): the
        # difference is this page's.
        before: dict[str, int] = dict((await connection.execute(COUNTS)).tuples().all())
        if contacts:
            page = await list_contacts(session, principal, first=PAGE, after=after, search=term)
            cursor = page.items[-1][1] if page.has_next_page else None
        else:
            listed = await list_conversations(
                session, principal, first=PAGE, after=after, search=term
            )
            cursor = listed.items[-1][1] if listed.has_next_page else None
        after_page: dict[str, int] = dict((await connection.execute(COUNTS)).tuples().all())
    tables = ("contacts", "conversations")
    return {t: int(after_page.get(t, 0)) - int(before.get(t, 0)) for t in tables}, cursor


@postgres_only
@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_a_search_page_reads_its_matches_not_the_workspace(
    db: Database, big_inbox: InboxWorkspace, role: str
) -> None:
    """Given 10,000 conversations, one contact each,
    when the Admin or the Agent reads the first page of 20 of a search and the next,
    for a rare term, one matching nothing and a phone number fragment,
    then each page reads at most a few hundred contacts and conversations (before the
    trigram indexes: every contact of the workspace, then a sort of the matches)."""
    actor = big_inbox.agent if role == "agent" else big_inbox.admin
    for term in RARE:
        after: str | None = None
        for _ in range(2):
            read, after = await _read(db, big_inbox, actor, term, contacts=False, after=after)
            assert max(read.values()) <= RARE_BOUND, f"{role} {term!r}: {read}"
            if after is None:
                break
        read, _ = await _read(db, big_inbox, actor, term, contacts=True, after=None)
        assert max(read.values()) <= RARE_BOUND, f"{role} contacts {term!r}: {read}"


@postgres_only
@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_a_common_term_walks_the_list(
    db: Database, big_inbox: InboxWorkspace, role: str
) -> None:
    """Given 10,000 conversations,
    when the Admin or the Agent reads the first page of 20 of a search matching every
    contact or one in nine, and the page after it,
    then the page walks the list's order: about a page's worth of conversations per
    match rate (before: every match read and sorted), and the lookup stops at its limit;
    and contacts(search:) walks the contacts by name so."""
    actor = big_inbox.agent if role == "agent" else big_inbox.admin
    for term in COMMON:
        after: str | None = None
        for _ in range(2):
            read, after = await _read(db, big_inbox, actor, term, contacts=False, after=after)
            where = f"{role} {term!r}: {read}"
            assert read["conversations"] <= WALK_BOUND, where
            assert read["contacts"] <= LOOKUP_BOUND + WALK_BOUND, where
            assert after is not None
        # contacts(search:) walks the contacts' name index the same way.
        read, after = await _read(db, big_inbox, actor, term, contacts=True, after=None)
        assert read["contacts"] <= LOOKUP_BOUND + WALK_BOUND, f"{role} contacts {term!r}: {read}"
        assert read["conversations"] <= WALK_BOUND, f"{role} contacts {term!r}: {read}"
        assert after is not None
