"""A contact looked up by one of its values (a webhook's sender by WhatsApp id or user id,
a contact by its phone number or name) reads a B-tree, never the search's trigram indexes
(PostgreSQL).

pg_trgm's GiST operator class serves `=` as well as ILIKE, and the planner costs its probe
a little below the unique B-tree's; but a GiST probe for one value walks every page whose
signature the value's trigrams might match. Measured before migration 0033 (2026-12-06,
250,000 contacts, WhatsApp ids of digits): a new sender's lookup read 2,550 pages in 25 to
47 ms through `ix_contacts_wa_id_trigrams`, against 3 pages and 0.03 ms through
`uq_contacts_org_id_wa_id`. Since 0033 the trigram indexes are built on `lower(column)`,
which only the search function (`weflux_matching_contacts`) names.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import or_
from sqlmodel import col, select

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import create_contact
from tests.fixtures.plans import InboxWorkspace, analyze, explained, inbox_workspace
from weflux.auth.crossings import matching_contacts
from weflux.auth.scoping import core_scope_params
from weflux.db import Database
from weflux.models import Contact, Organization
from weflux.models.inbox import SEARCHED_CONTACT_COLUMNS
from weflux.services.ingest import senders

CONTACTS = 5_000
# A contact of tests.fixtures.plans.inbox_workspace: "Contact <n>", WhatsApp id 49<n in
# ten digits>, phone number +49<n in ten digits>.
VALUES: dict[str, str] = {
    "name": "Contact 777",
    "profile_name": "Contact 777",
    "phone_number": "+490000000777",
    "wa_id": "490000000777",
}


@pytest.fixture
async def contacts(db: Database, owner_db: Database) -> InboxWorkspace:
    """A workspace of 5,000 contacts and conversations, with statistics."""
    workspace = await inbox_workspace(db, CONTACTS)
    async with owner_db.engine.connect() as connection:
        await analyze(connection, "contacts")
    return workspace


async def _plan(
    db: Database, ws: InboxWorkspace, statement: Any, *, core: bool = False, **params: Any
) -> str:
    """`statement`'s plan, as the app's role runs it in `ws`'s scope (row-level security
    on): through the session (its criteria), or `core` on its connection (`core_scope`)."""
    async with db.session(ws.org_id) as session:
        with explained(db) as plans:
            if core:
                connection = await session.connection()
                await connection.execute(statement, {**params, **core_scope_params(session)})
            else:
                await session.exec(statement, params=params)
    assert len(plans) == 1, plans
    return "\n".join(plans[0])


@postgres_only
@pytest.mark.parametrize("column", SEARCHED_CONTACT_COLUMNS)
async def test_a_contact_found_by_one_value_never_reads_a_trigram_index(
    db: Database, contacts: InboxWorkspace, column: str
) -> None:
    """Given a workspace of 5,000 contacts with statistics,
    when a contact is looked up by its value of a searched column (`column = value`),
    then the plan reads no trigram index (they serve the search alone)."""
    statement = select(col(Contact.id)).where(getattr(Contact, column) == VALUES[column])
    plan = await _plan(db, contacts, statement)
    assert "_trigrams" not in plan, plan


@postgres_only
async def test_a_webhooks_senders_are_found_by_their_unique_indexes(
    db: Database, contacts: InboxWorkspace
) -> None:
    """Given a workspace of 5,000 contacts with statistics,
    when a webhook's senders are looked up (weflux.services.ingest.senders, a batch's
    lookup) by WhatsApp id and by user id,
    then each arm reads its unique index, and no trigram index."""
    plan = await _plan(
        db,
        contacts,
        senders._SENDERS,
        core=True,
        user_ids=["U.1234"],
        wa_ids=[VALUES["wa_id"]],
    )
    assert "_trigrams" not in plan, plan
    assert "uq_contacts_org_id_wa_id" in plan, plan
    assert "uq_contacts_org_id_user_id" in plan, plan


# Names whose cases differ beyond ASCII: the search function's `lower(column) LIKE
# lower(pattern)` must find what `column ILIKE pattern` finds (PostgreSQL lowers both sides
# of an ILIKE in a multi-byte encoding, so the two agree; this pins it).
NAMES = [
    ("Zoë Ånström", "ZOË", "491700000001"),
    ("ÉMILE ÇA", None, "491700000002"),
    ("Straße", "STRASSE", "491700000003"),
    ("ΣΟΦΊΑ", "σοφία", "491700000004"),
    ("Ana 100% Real", "ana", "491700000005"),
]
TERMS = ["ånström", "ZOË", "émile ç", "straße", "STRASSE", "σοφία", "ΣΟΦΊΑ", "ANA", "100%", "91700"]


@postgres_only
@pytest.mark.parametrize("term", TERMS)
async def test_the_search_function_finds_what_ilike_finds(
    db: Database, org: Organization, term: str
) -> None:
    """Given contacts whose names differ in case beyond ASCII,
    when the trigram search function looks up a term,
    then it answers exactly the contacts `ILIKE` matches on the searched columns."""
    async with db.session(org.id) as session:
        for name, profile, wa_id in NAMES:
            await create_contact(session, name=name, profile_name=profile, wa_id=wa_id)
    pattern = "%" + term.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    async with db.session(org.id) as session:
        found = set(await matching_contacts(session, pattern, None, 1000))
        ilike = or_(
            *(getattr(Contact, c).ilike(pattern, escape="/") for c in SEARCHED_CONTACT_COLUMNS)
        )
        expected = set((await session.exec(select(col(Contact.id)).where(ilike))).all())
    assert expected, term  # every term matches someone
    assert found == expected
