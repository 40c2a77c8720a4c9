"""Exports: built by the worker, sealed at rest, readable by the person they are about."""

from __future__ import annotations

import io
import json
import os
import stat
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from tests.fixtures.factories import Actor, create_contact, create_conversation, create_message
from tests.fixtures.principals import principal_of
from weflux.auth import recovery_codes
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure, exports, worker
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.models import (
    CannedReply,
    ConversationLabel,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    Label,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    MessageDirection,
    Note,
    User,
    WhatsAppAccount,
    utcnow,
)
from weflux.services.audit import RequestMeta


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing([("k1", os.urandom(32))])


async def _built(db: Database, request_id: object, org_id: object) -> DataRequest:
    async with db.session(org_id) as session:  # type: ignore[arg-type]
        row = await session.get(DataRequest, request_id)
    assert row is not None
    return row


def _unzip(keyring: KeyRing, directory: Path, row: DataRequest) -> zipfile.ZipFile:
    assert row.file_name is not None
    data = b"".join(
        exports.open_sealed(directory / row.file_name, exports.data_key(keyring, row), row.id)
    )
    return zipfile.ZipFile(io.BytesIO(data))


async def test_a_contact_export_holds_the_contact_its_conversations_messages_and_notes(
    db: Database, admin: Actor, other_admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given a contact with 1,200 messages (three pages) and a private note, and another
    contact with a note,
    when an Admin exports the first and the worker runs,
    then the file is COMPLETED with a download path, expires in 24 hours, is not a zip
    at rest, and holds a manifest and JSON Lines of just that contact's rows, its
    conversation's note included."""
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session, name="Ada")
        conversation = await create_conversation(session, contact=contact)
        for n in range(1200):
            await create_message(session, conversation, text=f"hello {n}", touch_conversation=False)
        session.add(
            Note(
                conversation_id=conversation.id,
                author_membership_id=admin.membership.id,
                text="prefers mornings",
            )
        )
        someone_else = await create_conversation(session)
        session.add(Note(conversation_id=someone_else.id, text="not about Ada"))
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.export_contact_data(
            session, principal_of(admin), RequestMeta(), contact_id=contact.id
        )
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports")

    await run_due_requests(lifecycle)

    row = await _built(db, request.id, admin.org_id)
    assert (row.status, row.progress) == (DataRequestStatus.COMPLETED, 1.0)
    assert row.expires_at is not None
    assert row.completed_at is not None
    assert row.expires_at - row.completed_at == timedelta(hours=24)
    assert row.file_name is not None
    raw = (tmp_path / "exports" / row.file_name).read_bytes()
    assert b"hello 1" not in raw
    # Only the server's user reads it (as media files): whatever the umask.
    assert stat.S_IMODE((tmp_path / "exports").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "exports" / row.file_name).stat().st_mode) == 0o600
    assert not zipfile.is_zipfile(tmp_path / "exports" / row.file_name)
    archive = _unzip(keyring, tmp_path / "exports", row)
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["format"] == "weflux-export"
    assert manifest["formatVersion"] == 1
    assert manifest["kind"] == "CONTACT_EXPORT"
    assert manifest["schemaRevision"]
    assert {f["table"]: f["rows"] for f in manifest["files"]} == {
        "contacts": 1,
        "conversations": 1,
        "messages": 1200,
        "message_reactions": 0,
        "notes": 1,
        "conversation_labels": 0,
        "media_files": 0,
    }
    note = json.loads(archive.read("notes.jsonl"))
    assert (note["text"], note["author_membership_id"]) == (
        "prefers mornings",
        str(admin.membership.id),
    )
    lines = archive.read("messages.jsonl").decode().splitlines()
    assert [json.loads(line)["text"] for line in lines][:2] == ["hello 0", "hello 1"]
    assert json.loads(archive.read("contacts.jsonl"))["name"] == "Ada"


async def test_a_workspace_export_never_carries_a_secret_and_dies_at_expiry(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given a workspace with a number whose credentials are sealed, and the team's tools
    (a label on a conversation, a note, a canned reply),
    and a member with a second factor (a sealed secret, recovery code hashes),
    when its export is built, then the tools are in it and no `_enc`, `_hash` or
    `_hashes` column is; and once past `expiresAt` the worker destroys the file and its key."""
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
        label = Label(name="vip", color="#aa0000")
        session.add(label)
        await session.flush()
        session.add(ConversationLabel(conversation_id=conversation.id, label_id=label.id))
        session.add(Note(conversation_id=conversation.id, text="call back"))
        session.add(CannedReply(shortcut="hi", text="Hello! How can we help?"))
        account = (await session.exec(select(WhatsAppAccount))).one()
        account.access_token_enc = "v1.k1.sealed-token"
        session.add(account)
        user = await session.get(User, admin.user.id)
        assert user is not None
        user.totp_secret_enc = "v1.k1.sealed-totp"
        user.recovery_code_hashes = recovery_codes.stored_form(
            keyring, user.id, ("aaaaa-bbbbb", "ccccc-ddddd")
        )
        stored_codes = user.recovery_code_hashes
        session.add(user)
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports")
    await run_due_requests(lifecycle)
    row = await _built(db, request.id, admin.org_id)
    archive = _unzip(keyring, tmp_path / "exports", row)

    names = set(archive.namelist())
    assert {"organizations.jsonl", "users.jsonl", "messages.jsonl", "manifest.json"} <= names
    assert "sessions.jsonl" not in names
    rows = {f["table"]: f["rows"] for f in json.loads(archive.read("manifest.json"))["files"]}
    assert {t: rows[t] for t in ("labels", "conversation_labels", "notes", "canned_replies")} == {
        "labels": 1,
        "conversation_labels": 1,
        "notes": 1,
        "canned_replies": 1,
    }
    assert json.loads(archive.read("canned_replies.jsonl"))["shortcut"] == "hi"
    everything = b"".join(archive.read(name) for name in names)
    assert b"sealed-token" not in everything
    assert b"password_hash" not in everything
    assert b"_enc" not in everything
    # Recovery codes are 50 random bits: whoever holds the key ring and a stored hash
    # could search it, and the code then passes for the member's second factor.
    for value in stored_codes.split():
        assert value.partition(":")[2].encode() not in everything
    assert recovery_codes.digest("aaaaa-bbbbb").encode() not in everything
    assert b"recovery_code" not in everything

    await run_due_requests(lifecycle, now=utcnow() + timedelta(hours=25))

    gone = await _built(db, request.id, admin.org_id)
    assert (gone.file_name, gone.file_key_enc) == (None, None)
    assert list((tmp_path / "exports").iterdir()) == []


def test_no_exported_column_is_named_like_a_credential() -> None:
    """Given every table a workspace or contact export writes,
    then none of the columns it keeps is named like a credential (a secret, a token, a
    password, a hash other than a file's `sha256`; a time `…_at` aside): a new one is
    excluded or renamed."""
    kept = {
        f"{name}.{column.name}"
        for kind in DataRequestKind
        for name, model, _ in exports._tables(kind, uuid.uuid4())
        for column in model.__table__.columns  # type: ignore[attr-defined]
        if not exports.excluded(column.name) and not column.name.endswith("_at")
    }
    words = ("secret", "token", "password", "hash", "otp_")
    assert {c for c in kept if any(w in c.split(".")[1] for w in words)} == set()


@pytest.mark.parametrize("damage", ["flip", "cut", "swap", "other-row"])
async def test_an_altered_export_file_does_not_open(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path, damage: str
) -> None:
    """Given a built export of several chunks, when a byte is flipped, the file is cut,
    two chunks are swapped or it is opened as another request's, then it does not open."""
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
        for _ in range(800):
            await create_message(session, conversation, text=os.urandom(300).hex())
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    await run_due_requests(Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports"))
    row = await _built(db, request.id, admin.org_id)
    assert row.file_name is not None
    path = tmp_path / "exports" / row.file_name
    data = bytearray(path.read_bytes())
    key = exports.data_key(keyring, row)
    request_id = row.id
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "cut":
        del data[len(data) - 100 :]
    elif damage == "swap":
        first = len(exports.MAGIC)
        size = 4 + 1 + 12 + exports.CHUNK + 16
        one, two = data[first : first + size], data[first + size : first + 2 * size]
        assert len(two) == size
        data[first : first + 2 * size] = two + one
    else:
        request_id = admin.org_id
    path.write_bytes(bytes(data))

    with pytest.raises(exports.ExportError):
        b"".join(exports.open_sealed(path, key, request_id))


async def test_an_export_that_keeps_failing_is_failed_after_five_attempts(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given an export directory that cannot be written (a file stands in its place),
    when the worker tries five times, then the request is FAILED with the error's type."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=blocked)
    for _ in range(5):
        await run_due_requests(lifecycle)

    row = await _built(db, request.id, admin.org_id)
    assert (row.status, row.attempts, row.last_error) == (
        DataRequestStatus.FAILED,
        5,
        "FileExistsError",
    )


async def test_a_workspace_export_leaves_out_an_erased_contacts_files_and_keeps_detached_ones(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given a contact erased (the tombstone; the worker has not purged yet) whose photo
    the team sent on to another contact, and a received file detached by retention
    (`message_id` null) that another message still carries,
    when the workspace's export is built,
    then `media_files.jsonl` holds the detached file (its `message_id` null) and not the
    erased contact's photo, nor its caption anywhere."""
    async with db.session(admin.org_id) as session:
        erased = await create_contact(session, wa_id="4915100000001")
        theirs = await create_conversation(session, contact=erased)
        received = await create_message(session, theirs)
        others = await create_conversation(session)
        photo = _inbound_file(admin, received.id, erased.id, "erased caption")
        detached = _inbound_file(admin, None, others.contact_id, "kept caption")
        session.add_all([photo, detached])
        await session.flush()
        for carried in (photo, detached):
            await create_message(
                session, others, media_file_id=carried.id, direction=MessageDirection.OUTBOUND
            )
        await erasure.tombstone_contact(session, erased, now=utcnow())
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports")

    await run_due_requests(lifecycle)

    archive = _unzip(keyring, tmp_path / "exports", await _built(db, request.id, admin.org_id))
    files = [json.loads(line) for line in archive.read("media_files.jsonl").splitlines()]
    assert [(f["id"], f["message_id"]) for f in files] == [(str(detached.id), None)]
    everything = b"".join(archive.read(name) for name in archive.namelist())
    assert b"erased caption" not in everything


def _inbound_file(
    admin: Actor, message_id: uuid.UUID | None, sender: uuid.UUID, caption: str
) -> MediaFile:
    return MediaFile(
        org_id=admin.org_id,
        origin=MediaOrigin.INBOUND,
        message_id=message_id,
        sender_contact_id=sender,
        kind="image",
        mime_type="image/jpeg",
        caption=caption,
        status=MediaStatus.READY,
    )


async def _export_contact(db: Database, admin: Actor, contact_id: uuid.UUID) -> DataRequest:
    async with db.session(admin.org_id) as session:
        return await lifecycle_requests.export_contact_data(
            session, principal_of(admin), RequestMeta(), contact_id=contact_id
        )


async def _export_workspace(db: Database, admin: Actor) -> DataRequest:
    async with db.session(admin.org_id) as session:
        return await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )


async def _erase(db: Database, admin: Actor, contact_id: uuid.UUID) -> None:
    async with db.session(admin.org_id) as session:
        await lifecycle_requests.erase_contact(
            session, principal_of(admin), RequestMeta(), contact_id=contact_id
        )


async def test_an_export_built_before_an_erasure_is_destroyed_with_it(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given built exports: the workspace's, Ada's own, and another contact's,
    when Ada is erased,
    then at once the two that may hold her lose their key and expire (not downloadable),
    the worker's next sweep deletes their files, and the other contact's export stays."""
    async with db.session(admin.org_id) as session:
        ada = await create_contact(session, name="Ada")
        await create_message(session, await create_conversation(session, contact=ada), text="hi")
        bob = await create_contact(session, name="Bob")
    workspace = await _export_workspace(db, admin)
    own = await _export_contact(db, admin, ada.id)
    other = await _export_contact(db, admin, bob.id)
    directory = tmp_path / "exports"
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=directory)
    await run_due_requests(lifecycle)
    built = [await _built(db, r.id, admin.org_id) for r in (workspace, own, other)]
    assert {row.status for row in built} == {DataRequestStatus.COMPLETED}

    await _erase(db, admin, ada.id)

    now = utcnow()
    for request in (workspace, own):
        row = await _built(db, request.id, admin.org_id)
        assert row.file_key_enc is None
        assert row.expires_at is not None
        assert exports.expired(row, now)
    kept = await _built(db, other.id, admin.org_id)
    assert kept.file_key_enc is not None
    assert not exports.expired(kept, now)

    await run_due_requests(lifecycle)

    assert sorted(p.name for p in directory.iterdir()) == [str(built[2].file_name)]


async def test_an_export_being_built_when_a_contact_is_erased_is_built_again_without_it(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given a workspace export whose build has written Ada's contact row,
    when Ada is erased before the build ends,
    then that build's file is discarded (the request stays open), and the next sweep
    builds it again without her."""
    async with db.session(admin.org_id) as session:
        ada = await create_contact(session, name="Ada Lovelace")
        await create_contact(session, name="Bob")
    request = await _export_workspace(db, admin)
    directory = tmp_path / "exports"
    tables = [t for t, _, _ in exports._tables(DataRequestKind.WORKSPACE_EXPORT, None)]
    assert tables.index("contacts") < len(tables) - 1  # the erasure lands mid-build
    erased: list[float] = []

    async def erase_after_contacts(value: float) -> None:
        if not erased and value >= 0.95 * (tables.index("contacts") + 1) / len(tables):
            erased.append(value)
            await _erase(db, admin, ada.id)

    await exports.build_export(
        db, keyring, directory, admin.org_id, request.id, progress=erase_after_contacts
    )

    discarded = await _built(db, request.id, admin.org_id)
    assert (discarded.status, discarded.file_name, discarded.progress) == (
        DataRequestStatus.PENDING,
        None,
        0.0,
    )
    assert list(directory.iterdir()) == []

    await run_due_requests(Lifecycle(db=db, keyring=keyring, export_dir=directory))

    row = await _built(db, request.id, admin.org_id)
    assert row.status == DataRequestStatus.COMPLETED
    archive = _unzip(keyring, directory, row)
    names = [json.loads(line)["name"] for line in archive.read("contacts.jsonl").splitlines()]
    assert names == ["Bob"]


async def test_a_contact_export_holds_their_files_and_the_labels_on_their_conversations(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given Ada, who sent a photo (since detached from its message by retention) and
    was sent an upload, whose conversation carries a label, and Bob, who sent a photo,
    when Ada's data is exported,
    then `media_files.jsonl` holds her two files and not Bob's, and
    `conversation_labels.jsonl` her conversation's label."""
    async with db.session(admin.org_id) as session:
        ada = await create_contact(session, name="Ada")
        hers = await create_conversation(session, contact=ada)
        bobs = await create_conversation(session)
        bob_sent = await create_message(session, bobs)
        sent = _inbound_file(admin, None, ada.id, "Ada's photo")
        upload = _inbound_file(admin, None, ada.id, "our brochure")
        upload.origin, upload.sender_contact_id = MediaOrigin.UPLOAD, None
        theirs = _inbound_file(admin, bob_sent.id, bobs.contact_id, "Bob's photo")
        label = Label(name="vip", color="#aa0000")
        session.add_all([sent, upload, theirs, label])
        await session.flush()
        await create_message(
            session, hers, media_file_id=upload.id, direction=MessageDirection.OUTBOUND
        )
        session.add(ConversationLabel(conversation_id=hers.id, label_id=label.id))
    request = await _export_contact(db, admin, ada.id)

    await run_due_requests(Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports"))

    archive = _unzip(keyring, tmp_path / "exports", await _built(db, request.id, admin.org_id))
    files = [json.loads(line) for line in archive.read("media_files.jsonl").splitlines()]
    assert sorted(f["caption"] for f in files) == ["Ada's photo", "our brochure"]
    labelled = [json.loads(line) for line in archive.read("conversation_labels.jsonl").splitlines()]
    assert [(row["conversation_id"], row["label_id"]) for row in labelled] == [
        (str(hers.id), str(label.id))
    ]


async def test_a_build_that_fails_midway_leaves_no_partial_file(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given a workspace export being built, when the build fails halfway (its key dies
    with it), then nothing it wrote stays in the export directory."""
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    directory = tmp_path / "exports"

    async def fails(_: float) -> None:
        raise RuntimeError("the build fails halfway")

    with pytest.raises(RuntimeError):
        await exports.build_export(db, keyring, directory, admin.org_id, request.id, progress=fails)
    assert list(directory.iterdir()) == []


async def test_an_export_file_never_recorded_goes_with_the_workspace_and_with_failure(
    db: Database, admin: Actor, keyring: KeyRing, tmp_path: Path
) -> None:
    """Given export files a build wrote before it was killed (its request never recorded
    them: no `file_name`), when the workspace's exports are destroyed for its deletion,
    or the request is given up (FAILED), then the files go: the request's id names them."""
    directory = tmp_path / "exports"
    directory.mkdir()
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    for name in (f"{request.id}.wfx", f"{request.id}.wfx.part"):
        (directory / name).write_bytes(b"sealed bytes")
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=directory)

    await worker._destroy_exports_of(lifecycle, admin.org_id)
    assert list(directory.iterdir()) == []

    (directory / f"{request.id}.wfx").write_bytes(b"sealed bytes")
    async with db.session(admin.org_id) as session:
        row = await session.get(DataRequest, request.id)
        assert row is not None
        row.attempts = 5
        session.add(row)
    await worker._note_failure(lifecycle, admin.org_id, request.id, RuntimeError("boom"))
    assert (await _built(db, request.id, admin.org_id)).status == DataRequestStatus.FAILED
    assert list(directory.iterdir()) == []
