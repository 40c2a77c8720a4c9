"""Contact erasure: hidden at once, then hard-deleted by the worker, crash or not."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from tests.fixtures.factories import (
    Actor,
    create_contact,
    create_conversation,
    create_message,
)
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import see_erased
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure, ledger
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.models import (
    Contact,
    Conversation,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    ErasureLedgerEntry,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    Message,
    MessageDirection,
    MessageReaction,
    MessageStatus,
    WebhookEvent,
    WebhookEventStatus,
    contact_reactor,
    utcnow,
)
from weflux.services.audit import RequestMeta


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing([("ledger1", os.urandom(32))])


@dataclass
class Subject:
    contact: Contact
    conversation: Conversation
    messages: list[Message]
    queued: Message


async def _subject(db: Database, org_id: uuid.UUID, *, messages: int = 5) -> Subject:
    async with db.session(org_id) as session:
        contact = await create_contact(session, user_id="US.1234567890")
        conversation = await create_conversation(session, contact=contact)
        rows = [await create_message(session, conversation) for _ in range(messages)]
        if rows and rows[0].wa_message_id:
            session.add(
                MessageReaction(
                    conversation_id=conversation.id,
                    target_wa_message_id=rows[0].wa_message_id,
                    reactor=contact_reactor(contact.id),
                    contact_id=contact.id,
                    emoji="👍",
                )
            )
        queued = await create_message(
            session,
            conversation,
            direction=MessageDirection.OUTBOUND,
            status=MessageStatus.QUEUED,
            next_attempt_at=utcnow(),
        )
    return Subject(contact, conversation, rows, queued)


async def _body(
    db: Database, content: str, status: WebhookEventStatus = WebhookEventStatus.PROCESSED
) -> uuid.UUID:
    event_id = uuid.uuid4()
    body = content.encode()
    processed = status == WebhookEventStatus.PROCESSED
    async with db.session(webhook_event=event_id) as session:
        session.add(
            WebhookEvent(
                id=event_id,
                body=body,
                body_sha256=hashlib.sha256(body).hexdigest(),
                status=status,
                processed_at=utcnow() if processed else None,
            )
        )
    return event_id


async def _bodies(owner_db: Database) -> set[uuid.UUID]:
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM webhook_events"))).all()
    return {uuid.UUID(str(row[0])) for row in rows}


async def _erase(db: Database, actor: Actor, contact_id: uuid.UUID) -> DataRequest:
    async with db.session(actor.org_id) as session:
        return await lifecycle_requests.erase_contact(
            session, principal_of(actor), RequestMeta(), contact_id=contact_id
        )


async def test_an_erased_contact_is_hidden_at_once_and_its_queued_messages_never_go(
    db: Database, admin: Actor
) -> None:
    """Given a contact with a conversation, messages and a queued reply,
    when an Admin erases it,
    then from that commit no query of the workspace finds any of it, the queued reply is
    FAILED, and the erasure request is PENDING with a due date 30 days out."""
    subject = await _subject(db, admin.org_id)

    request = await _erase(db, admin, subject.contact.id)

    assert request.status == DataRequestStatus.PENDING
    assert (request.due_at - request.requested_at).days == 30
    async with db.session(admin.org_id) as session:
        assert await session.get(Contact, subject.contact.id) is None
        assert await session.get(Conversation, subject.conversation.id) is None
        assert await session.get(Message, subject.messages[0].id) is None
        assert (await session.exec(select(Contact))).all() == []
        assert (await session.exec(select(Conversation))).all() == []
        assert (await session.exec(select(Message))).all() == []
        assert (await session.exec(select(MessageReaction))).all() == []
    async with db.session(admin.org_id) as session:
        see_erased(session)
        assert len((await session.exec(select(MessageReaction))).all()) == 1
        queued = await session.get(Message, subject.queued.id)
        assert queued is not None
        assert queued.status == MessageStatus.FAILED


async def test_the_worker_deletes_everything_of_the_contact_and_records_the_ledger(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor, keyring: KeyRing
) -> None:
    """Given an erased contact, raw webhook bodies naming its WhatsApp id and its user id
    (processed, parked and still retried ones), one body that does not, and a contact of
    another workspace with the same WhatsApp id,
    when the worker runs,
    then every row of the contact and the bodies naming it are gone, the unrelated body
    and the other workspace are untouched, the request is COMPLETED, and the ledger holds
    ids and keyed hashes but no identifier."""
    subject = await _subject(db, admin.org_id)
    wa_id = subject.contact.wa_id
    assert wa_id is not None
    named = await _body(db, f'{{"contacts":[{{"wa_id":"{wa_id}"}}]}}')
    by_user_id = await _body(db, '{"from_user_id":"US.1234567890"}')
    unrelated = await _body(db, '{"contacts":[{"wa_id":"15550000000"}]}')
    longer = await _body(db, f'{{"wa_id":"9{wa_id}"}}')  # another number containing it
    parked = await _body(db, f'{{"from":"{wa_id}"}}', WebhookEventStatus.PARKED)
    retrying = await _body(db, f'{{"from":"{wa_id}","n":2}}', WebhookEventStatus.FAILED)
    async with db.session(other_admin.org_id) as session:
        theirs = await create_contact(session, wa_id=wa_id)
        their_conversation = await create_conversation(session, contact=theirs)
        await create_message(session, their_conversation)
    request = await _erase(db, admin, subject.contact.id)

    assert await run_due_requests(Lifecycle(db=db, keyring=keyring, batch=2)) == 1

    async with db.session(admin.org_id) as session:
        see_erased(session)
        assert await session.get(Contact, subject.contact.id) is None
        assert (await session.exec(select(Conversation))).all() == []
        assert (await session.exec(select(Message))).all() == []
        assert (await session.exec(select(MessageReaction))).all() == []
        done = await session.get(DataRequest, request.id)
        assert done is not None
        assert (done.status, done.progress) == (DataRequestStatus.COMPLETED, 1.0)
        assert done.completed_at is not None
    assert await _bodies(owner_db) == {unrelated, longer}
    assert named
    assert by_user_id
    assert parked
    assert retrying
    async with db.session(other_admin.org_id) as session:
        assert [c.id for c in (await session.exec(select(Contact))).all()] == [theirs.id]
        assert len((await session.exec(select(Message))).all()) == 1
    async with owner_db.session(all_workspaces="test: read the ledger") as session:
        entries = [entry async for entry in ledger.entries(session)]
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.org_id, entry.contact_id, entry.data_request_id) == (
        admin.org_id,
        subject.contact.id,
        request.id,
    )
    assert entry.key_id == "ledger1"
    assert entry.wa_id_hmac == ledger.wa_id_hash(keyring, wa_id)[1]
    assert wa_id not in str(entry.model_dump())
    assert "US.1234567890" not in str(entry.model_dump())


async def test_erasing_twice_answers_the_same_request(db: Database, admin: Actor) -> None:
    """Given an erased contact, when it is erased again, then the same request answers."""
    subject = await _subject(db, admin.org_id, messages=1)
    first = await _erase(db, admin, subject.contact.id)
    second = await _erase(db, admin, subject.contact.id)
    assert second.id == first.id


async def test_a_person_who_writes_again_is_a_new_contact(db: Database, admin: Actor) -> None:
    """Given an erased contact (not yet deleted), when a contact with the same WhatsApp
    id and user id is created, then it is a new row, and only it is visible."""
    subject = await _subject(db, admin.org_id, messages=1)
    await _erase(db, admin, subject.contact.id)
    async with db.session(admin.org_id) as session:
        again = await create_contact(
            session, wa_id=subject.contact.wa_id, user_id=subject.contact.user_id
        )
    async with db.session(admin.org_id) as session:
        assert [c.id for c in (await session.exec(select(Contact))).all()] == [again.id]


async def test_a_worker_killed_mid_erasure_finishes_on_its_next_run(
    db: Database, admin: Actor, keyring: KeyRing
) -> None:
    """Given an erasure whose worker dies after the first batches of messages,
    when the worker runs again,
    then the erasure completes, with one ledger entry."""
    subject = await _subject(db, admin.org_id, messages=7)
    request = await _erase(db, admin, subject.contact.id)

    class Killed(Exception):
        pass

    async def die(value: float) -> None:
        if value >= 0.2:
            raise Killed

    with pytest.raises(Killed):
        await erasure.purge_contact(db, admin.org_id, subject.contact.id, batch=2, progress=die)
    async with db.session(admin.org_id) as session:
        see_erased(session)
        assert await session.get(Contact, subject.contact.id) is not None

    await run_due_requests(Lifecycle(db=db, keyring=keyring, batch=2))

    async with db.session(admin.org_id) as session:
        see_erased(session)
        assert await session.get(Contact, subject.contact.id) is None
        assert (await session.exec(select(Message))).all() == []
        assert (await session.exec(select(MessageReaction))).all() == []
        done = await session.get(DataRequest, request.id)
        assert done is not None
        assert done.status == DataRequestStatus.COMPLETED
    async with db.session(admin.org_id) as session:
        assert (await session.exec(select(DataRequest))).all()[0].attempts == 1


async def test_an_erasure_past_its_due_date_is_an_alarm(
    db: Database, admin: Actor, keyring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    """Given an erasure request whose due date has passed,
    when the worker picks it up,
    then it logs an ERROR once (and completes it)."""
    subject = await _subject(db, admin.org_id, messages=1)
    request = await _erase(db, admin, subject.contact.id)
    later = request.due_at.replace(microsecond=0) + (request.due_at - request.requested_at)

    await run_due_requests(Lifecycle(db=db, keyring=keyring), now=later)

    overdue = [r for r in caplog.records if r.getMessage() == "data request overdue"]
    assert [r.levelname for r in overdue] == ["ERROR"]


async def test_ledger_replay_erases_a_restored_contact_and_spares_a_newer_one(
    db: Database, owner_db: Database, admin: Actor, keyring: KeyRing
) -> None:
    """Given (as a restored backup would hold it) a contact with messages, and a ledger
    entry recorded later that names its WhatsApp id by keyed hash under another id,
    when the ledger is replayed (twice),
    then the contact and its messages are gone, and the entry is in this database's
    ledger once; a contact created after the entry (a person who wrote again) would not
    match it."""
    async with db.session(admin.org_id) as session:
        restored = await create_contact(session, wa_id="4915112345678")
        conversation = await create_conversation(session, contact=restored)
        await create_message(session, conversation)
    entry = ErasureLedgerEntry(
        kind=DataRequestKind.CONTACT_ERASURE,
        org_id=admin.org_id,
        contact_id=uuid.uuid4(),
        wa_id_hmac=ledger.wa_id_hash(keyring, "4915112345678")[1],
        key_id=keyring.primary_kid,
    )

    assert await ledger.replay(owner_db, keyring, [entry]) == 1
    assert await ledger.replay(owner_db, keyring, [entry]) == 0

    async with db.session(admin.org_id) as session:
        see_erased(session)
        assert (await session.exec(select(Contact))).all() == []
        assert (await session.exec(select(Message))).all() == []
    async with owner_db.session(all_workspaces="test: read the ledger") as session:
        ids = [e.id async for e in ledger.entries(session)]
    assert ids == [entry.id]
    newer = Contact(
        org_id=admin.org_id,
        wa_id="4915112345678",
        created_at=entry.recorded_at + timedelta(seconds=1),
    )
    older = Contact(
        org_id=admin.org_id,
        wa_id="4915112345678",
        created_at=entry.recorded_at - timedelta(seconds=1),
    )
    assert not ledger.matches(entry, keyring, newer)
    assert ledger.matches(entry, keyring, older)


def _file(
    org_id: uuid.UUID,
    origin: MediaOrigin,
    message_id: uuid.UUID | None,
    sender: uuid.UUID | None = None,
) -> MediaFile:
    return MediaFile(
        org_id=org_id,
        origin=origin,
        message_id=message_id,
        sender_contact_id=sender,
        kind="image",
        mime_type="image/jpeg",
        status=MediaStatus.READY,
    )


async def test_ledger_replay_deletes_the_restored_contacts_files_by_the_erasure_rules(
    db: Database, owner_db: Database, admin: Actor, keyring: KeyRing
) -> None:
    """Given (as a restored backup would hold them) contact A's photo, which the team
    sent on to contact B; another photo of A's sent on to B that retention detached from
    its message; an upload sent to A only; one sent to A and B; and B's own photo sent
    on to A,
    when a ledger entry erasing A is replayed,
    then A's photos (even sent on, even detached) and the upload sent to A only are
    gone; the upload B also got and B's photo stay (CONTRACT §7;
    docs/lifecycle.md#which-files-go-when)."""
    org_id = admin.org_id
    async with db.session(org_id) as session:
        erased = await create_contact(session, wa_id="4915112340001")
        kept = await create_contact(session, wa_id="4915112340002")
        theirs = await create_conversation(session, contact=erased)
        others = await create_conversation(session, contact=kept)
        received = await create_message(session, theirs)
        photo = _file(org_id, MediaOrigin.INBOUND, received.id, erased.id)
        detached = _file(org_id, MediaOrigin.INBOUND, None, erased.id)
        only = _file(org_id, MediaOrigin.UPLOAD, None)
        shared = _file(org_id, MediaOrigin.UPLOAD, None)
        b_received = await create_message(session, others)
        b_photo = _file(org_id, MediaOrigin.INBOUND, b_received.id, kept.id)
        session.add_all([photo, detached, only, shared, b_photo])
        await session.flush()
        for conversation, carried in [
            (others, photo),
            (others, detached),
            (theirs, only),
            (theirs, shared),
            (others, shared),
            (theirs, b_photo),
        ]:
            await create_message(
                session,
                conversation,
                media_file_id=carried.id,
                direction=MessageDirection.OUTBOUND,
            )
    entry = ErasureLedgerEntry(
        kind=DataRequestKind.CONTACT_ERASURE, org_id=org_id, contact_id=erased.id
    )

    assert await ledger.replay(owner_db, keyring, [entry]) == 1

    async with db.session(org_id) as session:
        left = set((await session.exec(select(MediaFile.id))).all())
    assert left == {shared.id, b_photo.id}
