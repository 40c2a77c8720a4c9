"""Media files: an inbound message's photo, voice note or document, or an upload to send.

The row is also the download job of an inbound file (PENDING until the worker has it)
and holds the file's data key, sealed by the key ring (`data_key_enc`); the file itself
is encrypted in the media store (weflux.media), never in the database.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, Text, text
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class MediaStatus(enum.StrEnum):
    PENDING = "PENDING"  # inbound: waiting for (or between) download attempts
    DOWNLOADING = "DOWNLOADING"  # inbound: a worker holds the lease
    READY = "READY"  # stored encrypted; served at /media/{id}
    FAILED = "FAILED"  # final: `failure` says why (too large, checksum mismatch, gave up)


class MediaOrigin(enum.StrEnum):
    INBOUND = "INBOUND"  # a contact sent it; downloaded from Meta
    UPLOAD = "UPLOAD"  # a member uploaded it (uploadMedia), to send with sendMedia


class MediaFile(OrgScoped, table=True):
    """One media file of a workspace and where its encrypted bytes are stored."""

    __tablename__ = "media_files"
    __table_args__ = (
        Index(None, "org_id", "message_id"),
        # An erasure's files (`sender_contact_id = ?`) and the contact deletion's foreign
        # key check, which names no workspace: the contact id alone.
        Index(None, "sender_contact_id"),
        # The download worker's path, across workspaces: due inbound files.
        Index(
            "ix_media_files_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('PENDING', 'DOWNLOADING')"),
            sqlite_where=text("status IN ('PENDING', 'DOWNLOADING')"),
        ),
        # Downloads in flight, whose due ones are the suspects the worker claims alone.
        Index(
            "ix_media_files_in_flight",
            "next_attempt_at",
            postgresql_where=text("status = 'DOWNLOADING'"),
            sqlite_where=text("status = 'DOWNLOADING'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    origin: MediaOrigin = Field(
        sa_type=Enum(
            MediaOrigin, name="media_origin", native_enum=False, create_constraint=True, length=16
        )
    )
    # The inbound message it came with (None for an upload: messages name it instead).
    message_id: uuid.UUID | None = Field(
        default=None, foreign_key="messages.id", ondelete="CASCADE"
    )
    # The contact who sent it (None for an upload), kept when retention detaches the file
    # from its message: the contact's erasure deletes it (CONTRACT §7). No cascade: the
    # erasure deletes the file and its stored bytes first, a cascade would leave the bytes.
    sender_contact_id: uuid.UUID | None = Field(default=None, foreign_key="contacts.id")
    uploaded_by_membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    kind: str = Field(max_length=16, nullable=False)  # image, video, audio, document, sticker
    wa_media_id: str | None = Field(default=None, max_length=128)
    mime_type: str = Field(max_length=255, nullable=False)
    sha256: str | None = Field(default=None, max_length=128)  # as the webhook gave it
    caption: str | None = Field(default=None, sa_type=Text)
    filename: str | None = Field(default=None, max_length=255)
    size: int | None = Field(default=None)  # plaintext bytes, once stored
    status: MediaStatus = Field(
        sa_type=Enum(
            MediaStatus, name="media_status", native_enum=False, create_constraint=True, length=16
        )
    )
    failure: str | None = Field(default=None, max_length=500)
    storage_key: str | None = Field(default=None, max_length=255)
    data_key_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    stored_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class StoredObjectIntent(OrgScoped, table=True):
    """A file about to be written to the media store, recorded (and committed) before the
    write; the transaction that records the file on its owning row deletes it
    (`weflux.media.intents`). One still here an hour later is a write whose row never
    came (the store's answer lost after the file landed, the process killed, the
    transaction rolled back): the lifecycle worker deletes its file, then it.
    `claimed_at`: a sweep is deleting the file; no row may take it any more."""

    __tablename__ = "stored_object_intents"
    __table_args__ = (
        # The owning transaction's `DELETE … WHERE storage_key = ?`, and workspace deletion.
        Index(None, "org_id", "storage_key", unique=True),
        # The sweep's path, across workspaces: the oldest first.
        Index(None, "created_at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    storage_key: str = Field(max_length=255, nullable=False)
    created_at: datetime = created_at_field()
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
