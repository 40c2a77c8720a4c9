"""Search finds the same rows whichever way it reads them: on PostgreSQL a term of three
characters or more is looked up in the trigram indexes (weflux_matching_contacts) when it
matches at most SEARCH_CANDIDATES contacts, and walks the list's order otherwise; shorter
terms and SQLite read as before. Pages together are exactly the visible matches, in order,
for an Admin and an Agent, never another workspace's or an erased contact's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from tests.fixtures.factories import Actor, create_contact, create_conversation
from tests.fixtures.inbox import workspace
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import Contact, Conversation, Organization, Role, WhatsAppAccount, utcnow
from weflux.pagination import Page
from weflux.services import conversations as conversation_service
from weflux.services.contacts import list_contacts
from weflux.services.conversations import list_conversations

# (name, profile name, WhatsApp id): wildcards, cases, escapes, numbers.
CONTACTS = [
    ("Ana 100% Real", "ana", "4915110000001"),
    ("Ana 1000 Real", None, "4915110000002"),
    ("ana_b", "Anita", "4915110000003"),
    ("anaXb", None, "4915110000004"),
    ("Bob / Ana", "bobby", "4477009001234"),
    ("Zoë Ånström", None, "4477009005678"),
    (None, "Ana Profile", "4912345678901"),
    ("Carl", None, "4912345600000"),
]
TERMS = [
    "ana",
    "ANA REAL",
    "a_b",
    "100%",
    "/ An",
    "an",
    "a",
    "+44 (770) 09-001",
    "7700900",
    "4912345",
    "+49123",
    "obb",
    "nobody-has-this",
    "%%%",
]


def _matches(contact: Contact, term: str) -> bool:
    """contact_matches in Python, for ASCII terms: contains, case-insensitively, or the
    bare digits of a phone-looking term in the WhatsApp id."""
    fields = (contact.name, contact.profile_name, contact.phone_number, contact.wa_id)
    if any(value is not None and term.lower() in value.lower() for value in fields):
        return True
    digits = "".join(ch for ch in term if ch not in " -().+")
    return digits.isdigit() and digits != term and digits in (contact.wa_id or "")


@pytest.fixture
async def inbox(
    db: Database,
    org: Organization,
    other_org: Organization,
    account: WhatsAppAccount,
    other_account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
) -> list[tuple[Contact, Conversation]]:
    """Each contact twice over: in `org` (assigned in turn to the Agent, nobody and
    another Agent, some without a message, one erased) and in `other_org`."""
    made: list[tuple[Contact, Conversation]] = []
    now = utcnow()
    assignees = [agent.membership.id, None, other_agent.membership.id]
    async with workspace(db, org.id) as session:
        for n, (name, profile, wa_id) in enumerate(CONTACTS * 2):
            contact = await create_contact(
                session,
                name=name,
                profile_name=profile,
                wa_id=f"{wa_id[:-2]}{n:02d}" if n >= len(CONTACTS) else wa_id,
                erased_at=now if n == 3 else None,
            )
            conversation = await create_conversation(
                session,
                contact=contact,
                account=account,
                erased_at=now if n == 3 else None,
                assignee_membership_id=assignees[n % 3],
                last_message_at=None if n % 5 == 4 else now - timedelta(minutes=n % 7),
            )
            made.append((contact, conversation))
    async with workspace(db, other_org.id) as session:
        for name, profile, wa_id in CONTACTS:
            contact = await create_contact(session, name=name, profile_name=profile, wa_id=wa_id)
            await create_conversation(session, contact=contact, account=other_account)
    return made


async def _all_pages(
    db: Database, org_id: uuid.UUID, actor: Actor, term: str, *, contacts: bool
) -> list[uuid.UUID]:
    """Every page of 3 of the search, as `actor`: the rows' ids in page order."""
    seen: list[uuid.UUID] = []
    after: str | None = None
    while True:
        async with db.session(org_id) as session:
            if actor.membership.role == Role.AGENT:
                restrict_to_agent(session, actor.membership.id)
            principal = principal_of(actor)
            page: Page[Contact] | Page[Conversation] = (
                await list_contacts(session, principal, first=3, after=after, search=term)
                if contacts
                else await list_conversations(session, principal, first=3, after=after, search=term)
            )
        seen += [row.id for row, _ in page.items]
        if not page.has_next_page:
            return seen
        after = page.items[-1][1]


@pytest.mark.parametrize("candidates", [2, conversation_service.SEARCH_CANDIDATES])
async def test_search_pages_are_the_visible_matches_in_order(
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
    inbox: list[tuple[Contact, Conversation]],
    candidates: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given sixteen contacts with conversations (wildcards, cases, numbers; one erased;
    the same names in another workspace),
    when the Admin and the Agent page by 3 through conversations and contacts for each
    term, with the trigram lookup allowed 2 candidates (most terms then walk the list)
    or its default,
    then each gets exactly the matching rows they may see, in the list's order."""
    monkeypatch.setattr(conversation_service, "SEARCH_CANDIDATES", candidates)
    floor = datetime.min.replace(tzinfo=UTC)
    for actor in (admin, agent):
        # Every row the actor may see, in each list's own order (the database's collation).
        async with db.session(org.id) as session:
            if actor is agent:
                restrict_to_agent(session, agent.membership.id)
            conversations = (await session.exec(select(Conversation))).all()
            contacts = (
                await session.exec(
                    select(Contact).order_by(col(Contact.name).asc().nulls_last(), col(Contact.id))
                )
            ).all()
        newest_first = sorted(
            conversations,
            key=lambda v: (v.last_message_at is not None, v.last_message_at or floor, v.id),
            reverse=True,
        )
        contact_of = {contact.id: contact for contact, _ in inbox}
        for term in TERMS:
            where = f"{actor.membership.role} {term!r} ({candidates} candidates)"
            assert await _all_pages(db, org.id, actor, term, contacts=False) == [
                v.id for v in newest_first if _matches(contact_of[v.contact_id], term)
            ], where
            assert await _all_pages(db, org.id, actor, term, contacts=True) == [
                c.id for c in contacts if _matches(c, term)
            ], where
        # What the actor sees leaves out the erased contact and others' conversations.
        assert len(contacts) == (15 if actor is admin else 10)
    # The fixture's terms do reach both ways of reading on PostgreSQL.
    assert any(sum(_matches(c, t) for c, _ in inbox) > 2 for t in TERMS)
    assert any(0 < sum(_matches(c, t) for c, _ in inbox) <= 2 for t in TERMS)


async def test_the_lookup_answers_only_the_transactions_workspace(
    db: Database,
    org: Organization,
    other_org: Organization,
    inbox: list[tuple[Contact, Conversation]],
) -> None:
    """Given the same contacts in two workspaces,
    when each workspace's transaction looks a term up,
    then it gets its own contacts' ids only (PostgreSQL; SQLite has no lookup)."""
    ours = {contact.id for contact, _ in inbox}
    found = {}
    for org_id in (org.id, other_org.id):
        async with db.session(org_id) as session:
            found[org_id] = await conversation_service.matching_contact_ids(session, "ana")
            sqlite = (await session.connection()).dialect.name == "sqlite"
    if sqlite:
        assert found == {org.id: None, other_org.id: None}
        return
    here, there = found[org.id], found[other_org.id]
    assert here is not None
    assert there is not None
    assert len(here) == 12
    assert set(here) <= ours
    assert len(there) == 6
    assert not set(there) & ours
