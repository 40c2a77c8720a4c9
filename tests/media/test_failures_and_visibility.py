"""Inbound media that must not be stored (wrong checksum, too large), downloads that fail
and are retried without holding up others, who may fetch a file, and erasure."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.api import gql, token_for
from tests.fixtures.deaths import Died, WorkerProcess
from tests.fixtures.factories import Actor
from tests.fixtures.logs import capture_logs
from tests.fixtures.media import MediaInbox
from tests.fixtures.outbound import record_events
from tests.fixtures.two_factor import enroll, require_two_factors
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.lifecycle import erasure
from weflux.media import download
from weflux.models import (
    Conversation,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    Message,
    utcnow,
)
from weflux.worker.suspects import SUSPECTS_PER_RUN

FAILURE_QUERY = """
query($id: ID!) { node(id: $id) { ... on Message { media { downloadPath size failure } } } }
"""


def _files(settings: Settings) -> list[Path]:
    return [p for p in settings.media_directory.rglob("*") if p.is_file()]


async def _path(inbox: MediaInbox, message_id: uuid.UUID) -> str:
    row = await inbox.media_of(message_id)
    return f"/media/{encode_global_id('Media', row.id)}"


async def test_a_checksum_mismatch_fails_the_file_and_stores_nothing(
    media_inbox: MediaInbox, admin: Actor, settings: Settings
) -> None:
    """Given an image whose webhook announces another file's sha256 (base64, as Meta
    sends it),
    when the worker downloads it,
    then it is FAILED for good with a reason Media.failure shows, downloadPath stays
    null, nothing is stored, and /media answers 404."""
    wrong = base64.b64encode(hashlib.sha256(b"another file").digest()).decode()
    message_id = await media_inbox.receive(
        "image", b"\xff\xd8\xff" + b"x" * 5000, mime_type="image/jpeg", sha256=wrong
    )
    await media_inbox.download()

    row = await media_inbox.media_of(message_id)
    assert row.status == MediaStatus.FAILED
    assert row.storage_key is None
    assert _files(settings) == []
    token = await token_for(media_inbox.client, admin)
    media = (
        await gql(
            media_inbox.client,
            token,
            FAILURE_QUERY,
            {"id": encode_global_id("Message", message_id)},
        )
    ).json()["data"]["node"]["media"]
    assert media["downloadPath"] is None
    assert media["size"] is None
    assert media["failure"].startswith("Checksum mismatch")
    path = await _path(media_inbox, message_id)
    response = await media_inbox.client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404

    await media_inbox.make_due()
    assert await media_inbox.download() == 0  # final: never tried again


async def test_a_base64_checksum_that_matches_is_accepted(media_inbox: MediaInbox) -> None:
    """Given a document whose webhook gives its sha256 in base64,
    when it is downloaded,
    then it is READY (hex and base64 both verify)."""
    content = b"%PDF-1.7\n" + b"y" * 3000
    b64 = base64.b64encode(hashlib.sha256(content).digest()).decode()
    message_id = await media_inbox.receive(
        "document", content, mime_type="application/pdf", sha256=b64
    )
    await media_inbox.download()
    assert (await media_inbox.media_of(message_id)).status == MediaStatus.READY


@pytest.mark.parametrize("declared", ["honest", "lying"])
async def test_an_oversized_file_is_refused(
    media_inbox: MediaInbox, settings: Settings, declared: str
) -> None:
    """Given a sticker of 600 kB (WhatsApp allows 500 kB), whose size Meta announces
    honestly or understates,
    when the worker downloads it,
    then it is FAILED as too large (the stream is cut at the limit) and nothing is stored."""
    content = b"RIFF" + b"z" * 600_000
    message_id = await media_inbox.receive(
        "sticker",
        content,
        mime_type="image/webp",
        size=len(content) if declared == "honest" else 1000,
    )
    await media_inbox.download()

    row = await media_inbox.media_of(message_id)
    assert row.status == MediaStatus.FAILED
    assert row.failure is not None
    assert row.failure.startswith("Too large")
    assert _files(settings) == []
    downloads = [r for r in media_inbox.fake.requests if "attachments" in r.path]
    assert len(downloads) == (0 if declared == "honest" else 1)


async def test_a_failed_download_is_retried_and_does_not_block_others(
    media_inbox: MediaInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given three images received together, and the Cloud API failing the first call
    it gets (a 500),
    when the worker sweeps,
    then the two others are READY in that sweep and the failed one waits (PENDING, one
    attempt, a later next attempt); once due, the next sweep stores it too."""
    ids = [
        await media_inbox.receive("image", f"image {n}".encode() * 500, mime_type="image/png")
        for n in range(3)
    ]
    media_inbox.fake.fail_next_raw(1, http_status=500)
    # The retry's delay is drawn with full jitter down to its 1 s floor: on a loaded machine
    # the second sweep came more than a second after the failure and found it due.
    monkeypatch.setattr("weflux.worker.delivery.MIN_RETRY_DELAY", 600.0)

    assert await media_inbox.download() == 3
    rows = [await media_inbox.media_of(i) for i in ids]
    assert sorted(r.status for r in rows) == [
        MediaStatus.PENDING,
        MediaStatus.READY,
        MediaStatus.READY,
    ]
    waiting = next(r for r in rows if r.status == MediaStatus.PENDING)
    assert waiting.attempts == 1
    assert waiting.next_attempt_at is not None
    assert await media_inbox.download() == 0  # not due yet

    await media_inbox.make_due()
    assert await media_inbox.download() == 1
    assert (await media_inbox.media_of(ids[rows.index(waiting)])).status == MediaStatus.READY


async def test_a_download_given_up_after_max_attempts(media_inbox: MediaInbox) -> None:
    """Given a file the Cloud API keeps failing (503) and WEFLUX_MEDIA_DOWNLOAD_MAX_ATTEMPTS=3,
    when the worker tries until then,
    then it ends FAILED saying it gave up."""
    message_id = await media_inbox.receive("audio", b"OggS" * 100, mime_type="audio/ogg")
    media_inbox.fake.fail_next_raw(10, http_status=503)
    for _ in range(3):
        await media_inbox.make_due()
        await media_inbox.download()
    row = await media_inbox.media_of(message_id)
    assert row.status == MediaStatus.FAILED
    assert row.failure is not None
    assert "gave up after 3 attempts" in row.failure


async def test_a_killed_worker_download_is_resumed_after_its_lease(
    media_inbox: MediaInbox,
) -> None:
    """Given a download a worker claimed and then died on (left DOWNLOADING),
    when its lease has run out,
    then the next sweep claims it again and stores it."""
    message_id = await media_inbox.receive(
        "video", b"\x00\x00\x00\x18ftypmp42" * 99, mime_type="video/mp4"
    )
    row = await media_inbox.media_of(message_id)
    async with media_inbox.db.session(row.org_id) as session:
        await session.exec(
            update(MediaFile)
            .where(col(MediaFile.id) == row.id)
            .values(status=MediaStatus.DOWNLOADING, attempts=1)
        )
    await media_inbox.make_due()
    assert await media_inbox.download() == 1
    resumed = await media_inbox.media_of(message_id)
    assert resumed.status == MediaStatus.READY
    assert resumed.attempts == 2


async def test_a_file_that_kills_its_worker_takes_no_other_file_to_its_end(
    media_inbox: MediaInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a file whose download kills the worker, claimed in one sweep with two others,
    when workers come back after each death (each lease run out), then it alone is
    abandoned at its last attempt; the two others are stored on their second attempt,
    each downloaded alone."""
    messages = [
        await media_inbox.receive("audio", b"OggS" * (100 + i), mime_type="audio/ogg")
        for i in range(3)
    ]
    poison, *others = [(await media_inbox.media_of(m)).id for m in messages]
    process = WorkerProcess(monkeypatch, download, "download_one", poison=poison)
    with pytest.raises(Died):  # the three were in flight together
        await media_inbox.download()
    assert process.alongside[poison] == set(others)

    settings = media_inbox.runtime.settings
    for _ in range(settings.media_download_max_attempts + 1):
        async with media_inbox.db.session(media_inbox.account.org_id) as session:
            statement = select(MediaFile).where(col(MediaFile.status) == MediaStatus.DOWNLOADING)
            for row in (await session.exec(statement)).all():  # a lease passes
                assert row.next_attempt_at is not None
                row.next_attempt_at -= settings.media_download_lease + timedelta(seconds=1)
        process.dead = False  # a worker starts again
        with contextlib.suppress(Died):
            await media_inbox.download()

    dead = await media_inbox.media_of(messages[0])
    assert dead.status == MediaStatus.FAILED
    assert "abandoned" in (dead.failure or "")
    for message in messages[1:]:
        row = await media_inbox.media_of(message)
        assert (row.status, row.attempts) == (MediaStatus.READY, 2)
        assert process.alongside[row.id] == set()


async def test_after_a_crash_a_new_file_does_not_wait_behind_the_suspects(
    media_inbox: MediaInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given 60 downloads a crashed worker held (DOWNLOADING, their lease run out: more
    than a batch, each due before anything new) and then a new image,
    when a worker sweeps once, then it stores the new image, then `SUSPECTS_PER_RUN`
    suspects, each alone (the others are left to the next sweeps)."""
    settings = media_inbox.runtime.settings
    run_out = utcnow() - settings.media_download_lease - timedelta(seconds=1)
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        held = [
            MediaFile(
                org_id=media_inbox.account.org_id,
                origin=MediaOrigin.INBOUND,
                kind="image",
                mime_type="image/jpeg",
                status=MediaStatus.DOWNLOADING,
                attempts=1,
                next_attempt_at=run_out,
            )
            for _ in range(60)
        ]
        session.add_all(held)
    message_id = await media_inbox.receive("image", b"\xff\xd8\xff" * 999, mime_type="image/jpeg")
    new = (await media_inbox.media_of(message_id)).id
    process = WorkerProcess(monkeypatch, download, "download_one")

    assert await media_inbox.download() == 1 + SUSPECTS_PER_RUN

    assert (await media_inbox.media_of(message_id)).status == MediaStatus.READY
    first, *alone = process.alongside
    assert first == new
    assert set(alone) <= {row.id for row in held}
    assert len(alone) == SUSPECTS_PER_RUN
    assert all(others == set() for others in process.alongside.values())


async def _assign(db: Database, org_id: uuid.UUID, message_id: uuid.UUID, member: Actor) -> None:
    async with db.session(org_id) as session:
        message = await session.get(Message, message_id)
        assert message is not None
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == message.conversation_id)
            .values(assignee_membership_id=member.membership.id)
        )


async def test_only_members_who_may_see_the_message_get_the_file(
    media_inbox: MediaInbox,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given an image in a conversation assigned to one Agent,
    when each member fetches /media/{id},
    then the Admin, the Manager and that Agent get it; another Agent of the workspace
    and an Admin of another workspace get 404, as for a file that does not exist."""
    content = b"\x89PNG\r\n\x1a\n" + b"p" * 4000
    message_id = await media_inbox.receive("image", content, mime_type="image/png")
    await media_inbox.download()
    await _assign(media_inbox.db, media_inbox.account.org_id, message_id, agent)
    path = await _path(media_inbox, message_id)
    client = media_inbox.client

    for member, expected in [
        (admin, 200),
        (manager, 200),
        (agent, 200),
        (other_agent, 404),
        (other_admin, 404),
    ]:
        token = await token_for(client, member)
        response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == expected, member.user.email
        if expected == 404:
            assert content[:32] not in response.content
            assert response.json()["error"]["code"] == "NOT_FOUND"
    token = await token_for(client, admin)
    missing = f"/media/{encode_global_id('Media', uuid.uuid4())}"
    unknown = await client.get(missing, headers={"Authorization": f"Bearer {token}"})
    assert unknown.status_code == 404


async def test_a_member_who_must_enroll_in_two_factors_gets_no_file(
    media_inbox: MediaInbox, db: Database, admin: Actor
) -> None:
    """Given a downloaded image, and a workspace that now requires two factors of an
    Admin who has none yet (they may log in, but only to enroll),
    when they fetch /media/{id},
    then 403 TWO_FACTOR_REQUIRED without the file, as every GraphQL operation but
    enrolling answers; once enrolled, the same token gets the file."""
    content = b"\x89PNG\r\n\x1a\n" + b"p" * 4000
    message_id = await media_inbox.receive("image", content, mime_type="image/png")
    await media_inbox.download()
    path = await _path(media_inbox, message_id)
    await require_two_factors(db, admin.org_id)
    client = media_inbox.client
    token = await token_for(client, admin)

    refused = await client.get(path, headers={"Authorization": f"Bearer {token}"})

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "TWO_FACTOR_REQUIRED"
    assert content[:32] not in refused.content
    await enroll(client, token)
    served = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert served.content == content


async def test_erasing_the_contact_deletes_the_stored_files(
    media_inbox: MediaInbox, settings: Settings
) -> None:
    """Given two stored files of a contact,
    when the contact is erased and purged,
    then the files are gone from the store and their rows from the database."""
    for kind, mime in (("image", "image/jpeg"), ("audio", "audio/ogg")):
        await media_inbox.receive(kind, kind.encode() * 1000, mime_type=mime)
    await media_inbox.download()
    assert len(_files(settings)) == 2
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        contact_id = (await session.exec(select(Conversation.contact_id))).one()

    runtime = media_inbox.runtime
    assert await erasure.purge_contact(runtime.db, org_id, contact_id, batch=1, media=runtime.media)

    assert _files(settings) == []
    async with media_inbox.db.session(org_id) as session:
        assert (await session.exec(select(MediaFile))).all() == []


async def test_deleting_the_workspace_deletes_the_stored_files(
    media_inbox: MediaInbox, settings: Settings
) -> None:
    """Given a stored file,
    when the workspace is purged,
    then the stored file is gone too."""
    await media_inbox.receive("document", b"%PDF" * 900, mime_type="application/pdf")
    await media_inbox.download()
    assert len(_files(settings)) == 1
    runtime = media_inbox.runtime
    assert await erasure.purge_workspace(
        runtime.db, media_inbox.account.org_id, media=runtime.media
    )
    assert _files(settings) == []


async def test_message_updated_is_published_when_the_file_is_ready(
    media_inbox: MediaInbox,
) -> None:
    """Given a subscriber of the workspace's events and an inbound voice note,
    when the worker has stored it,
    then a messageUpdated event names the message and its conversation."""
    runtime = media_inbox.runtime
    events = await record_events(runtime.channel_services, media_inbox.account.org_id)
    message_id = await media_inbox.receive("audio", b"OggS" * 300, mime_type="audio/ogg")
    await media_inbox.download()
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        message = await session.get(Message, message_id)
        assert message is not None
    assert {
        "event": "messageUpdated",
        "id": str(message_id),
        "conversation_id": str(message.conversation_id),
    } in events


async def test_a_stored_file_the_disk_fails_to_read_is_503_upstream_unavailable(
    media_inbox: MediaInbox, admin: Actor, settings: Settings
) -> None:
    """Given a downloaded image whose stored file the disk then fails to give: unopenable
    (a directory in its place), then failing mid-read with EIO (/proc/self/mem),
    when an Admin fetches it,
    then each is 503 UPSTREAM_UNAVAILABLE with Retry-After and a warning naming the disk
    store and the error's class (no path); the file back in place is served again."""
    content = b"\x89PNG\r\n\x1a\n" + b"p" * 4000
    message_id = await media_inbox.receive("image", content, mime_type="image/png")
    await media_inbox.download()
    path = await _path(media_inbox, message_id)
    headers = {"Authorization": f"Bearer {await token_for(media_inbox.client, admin)}"}
    [stored] = _files(settings)
    kept = stored.read_bytes()
    stored.unlink()

    for broken, error in [("directory", "IsADirectoryError"), ("eio", "OSError")]:
        if broken == "directory":
            stored.mkdir()
        else:
            stored.rmdir()
            stored.symlink_to("/proc/self/mem")
        with capture_logs() as logs:
            response = await media_inbox.client.get(path, headers=headers)
        assert response.status_code == 503, broken
        assert response.headers["retry-after"] == "30"
        assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
        [warning] = [
            entry
            for entry in map(json.loads, logs.lines)
            if entry["msg"] == "the media store is unavailable"
        ]
        assert (warning["level"], warning["store"], warning["error"]) == (
            "warning",
            "disk",
            error,
        )
        assert str(stored) not in logs.text

    stored.unlink()
    stored.write_bytes(kept)
    served = await media_inbox.client.get(path, headers=headers)
    assert served.content == content
