"""Migration 0024: the sender of every inbound file stored before it, from its message."""

from __future__ import annotations

import uuid

from alembic.script import ScriptDirectory
from sqlmodel import select

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor, create_contact, create_conversation, create_message
from weflux.db import Database
from weflux.migrate import alembic_config, downgrade, migrate
from weflux.models import MediaFile, MediaOrigin, MediaStatus

REVISION = "0024_media_file_sender"


def _file(org_id: uuid.UUID, origin: MediaOrigin, message_id: uuid.UUID | None) -> MediaFile:
    return MediaFile(
        org_id=org_id,
        origin=origin,
        message_id=message_id,
        kind="image",
        mime_type="image/jpeg",
        status=MediaStatus.READY,
    )


async def test_the_migration_names_the_sender_of_each_received_file(
    database_urls: DatabaseUrls, db: Database, admin: Actor
) -> None:
    """Given, stored before senders were recorded, two contacts' received photos, an
    upload, and a received file already detached from its message,
    when the migration runs,
    then each received photo names the contact of its message's conversation; the upload
    and the detached file (no message left to tell) name none."""
    org_id = admin.org_id
    async with db.session(org_id) as session:
        contacts = [await create_contact(session) for _ in range(2)]
        photos = []
        for contact in contacts:
            conversation = await create_conversation(session, contact=contact)
            message = await create_message(session, conversation)
            photos.append(_file(org_id, MediaOrigin.INBOUND, message.id))
        upload = _file(org_id, MediaOrigin.UPLOAD, None)
        detached = _file(org_id, MediaOrigin.INBOUND, None)
        session.add_all([*photos, upload, detached])
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(REVISION).down_revision
    assert isinstance(previous, str)
    await downgrade(database_urls.owner, previous)

    await migrate(database_urls.owner, app_url=database_urls.app)

    async with db.session(org_id) as session:
        senders = dict(
            (await session.exec(select(MediaFile.id, MediaFile.sender_contact_id))).all()
        )
    assert senders == {
        photos[0].id: contacts[0].id,
        photos[1].id: contacts[1].id,
        upload.id: None,
        detached.id: None,
    }
