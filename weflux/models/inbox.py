"""The shared inbox: contacts, conversations, messages, and the raw webhook log."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    FetchedValue,
    Index,
    LargeBinary,
    Text,
    func,
    literal_column,
    text,
)
from sqlmodel import Field, SQLModel

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class ConversationStatus(enum.StrEnum):
    OPEN = "OPEN"
    PENDING = "PENDING"
    RESOLVED = "RESOLVED"


CONVERSATION_STATUS_MEANINGS: dict[ConversationStatus, str] = {
    ConversationStatus.OPEN: "Needs the team. A new conversation is OPEN.",
    ConversationStatus.PENDING: "Parked by the team, waiting on something; it stays PENDING "
    "when the contact writes.",
    ConversationStatus.RESOLVED: "Done; the contact's next message reopens it (OPEN).",
}


class MessageDirection(enum.StrEnum):
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


MESSAGE_DIRECTION_MEANINGS: dict[MessageDirection, str] = {
    MessageDirection.INBOUND: "The contact wrote it to the workspace's number.",
    MessageDirection.OUTBOUND: "The team sent it (`sentBy` says who).",
}


class MessageType(enum.StrEnum):
    """What a message is, by the Cloud API's own names (the values, stored as they are).

    Inbound ones are what the webhook parser (`weflux.whatsapp.parser`) produces;
    outbound ones are TEXT and TEMPLATE, and REACTION for the outbox row of a reaction
    (never listed: weflux.services.reactions).
    """

    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    TEMPLATE = "template"
    ORDER = "order"
    SYSTEM = "system"
    REACTION = "reaction"
    REQUEST_WELCOME = "request_welcome"
    UNSUPPORTED = "unsupported"


MESSAGE_TYPE_MEANINGS: dict[MessageType, str] = {
    MessageType.TEXT: "Plain text; `text` holds it.",
    MessageType.IMAGE: "A photo; `text` holds its caption, if any.",
    MessageType.VIDEO: "A video; `text` holds its caption, if any.",
    MessageType.AUDIO: "A voice note or audio file.",
    MessageType.DOCUMENT: "A file (PDF, …); `text` holds its caption, if any.",
    MessageType.STICKER: "A sticker (static or animated).",
    MessageType.LOCATION: "A shared location; `text` holds its name and address, or its "
    "coordinates.",
    MessageType.CONTACTS: "Shared contact cards; `text` lists their names.",
    MessageType.INTERACTIVE: "The contact's answer to a list or button message; `text` holds "
    "the chosen title.",
    MessageType.BUTTON: "A tap on a template's quick-reply button; `text` holds its label.",
    MessageType.TEMPLATE: "An approved template the team sent (sendTemplateMessage).",
    MessageType.ORDER: "An order from the catalogue; `text` summarises it.",
    MessageType.SYSTEM: "A notice from WhatsApp (say, the contact changed number).",
    MessageType.REACTION: "An emoji reaction. Never listed as a message: reactions show in "
    "`Message.reactions` of the message they react to.",
    MessageType.REQUEST_WELCOME: "The contact opened the chat for the first time and asks for "
    "a welcome message.",
    MessageType.UNSUPPORTED: "A kind WhatsApp does not support or this API does not know yet.",
}


class MessageStatus(enum.StrEnum):
    """Outbound statuses only move forward; FAILED is final."""

    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    FAILED = "FAILED"


MESSAGE_STATUS_MEANINGS: dict[MessageStatus, str] = {
    MessageStatus.RECEIVED: "Inbound: it arrived (every inbound message is RECEIVED).",
    MessageStatus.QUEUED: "Outbound: stored, waiting for the delivery worker.",
    MessageStatus.SENDING: "Outbound: the worker is handing it to WhatsApp.",
    MessageStatus.SENT: "Outbound: WhatsApp accepted it (one tick).",
    MessageStatus.DELIVERED: "Outbound: it reached the contact's phone (two ticks).",
    MessageStatus.READ: "Outbound: the contact read it (blue ticks), when they share read "
    "receipts.",
    MessageStatus.FAILED: "Outbound: it will not be delivered; `errorCode` and `errorTitle` say "
    "why. Final.",
}


STATUS_RANK = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENDING: 1,
    MessageStatus.SENT: 2,
    MessageStatus.DELIVERED: 3,
    MessageStatus.READ: 4,
}


def moves_forward(current: MessageStatus, new: MessageStatus) -> bool:
    """Whether `new` may replace `current` (never backwards, nothing after FAILED)."""
    if current in (MessageStatus.FAILED, MessageStatus.RECEIVED) or current == new:
        return False
    if new == MessageStatus.FAILED:
        return current in (MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.SENT)
    return STATUS_RANK.get(new, -1) > STATUS_RANK.get(current, -1)


def _enum(kind: type[enum.Enum], name: str) -> Any:
    return Enum(kind, name=name, native_enum=False, create_constraint=True, length=16)


# The columns a search matches with `ILIKE '%term%'` (weflux.services.conversations.
# contact_matches). PostgreSQL: a GiST index of the trigrams of each one's `lower()` after
# the workspace (pg_trgm, btree_gist; migrations 0025 and 0033), read by
# `weflux_matching_contacts` (weflux.auth.crossings.matching_contacts); SQLite reads its
# contacts as before. On `lower(column)`, not the column: pg_trgm's operator class serves
# `=` too, and the planner took it for every lookup of a contact by its value, walking
# thousands of pages where the B-tree reads three (tests/models/test_contact_lookup_plans.py).
SEARCHED_CONTACT_COLUMNS = ("name", "profile_name", "phone_number", "wa_id")
_SEARCH_INDEXES = tuple(
    Index(
        f"ix_contacts_{column}_trigrams",
        "org_id",
        func.lower(literal_column(column)).label(f"{column}_lower"),
        postgresql_using="gist",
        postgresql_ops={f"{column}_lower": "gist_trgm_ops(siglen=64)"},
    ).ddl_if(dialect="postgresql")
    for column in SEARCHED_CONTACT_COLUMNS
)


class Contact(OrgScoped, table=True):
    """A customer: keyed by the business-scoped `user_id` when known, else by `wa_id`.

    Two names: `profile_name` is the latest WhatsApp profile name (the contact's own);
    `name` is the one to show: the team's when `name_set_by_team`, else the profile name.
    Only `weflux.services.contacts` writes them, so that rule holds.
    """

    __tablename__ = "contacts"
    __table_args__ = (
        Index(
            "uq_contacts_org_id_user_id",
            "org_id",
            "user_id",
            unique=True,
            postgresql_where=text("user_id IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=text("user_id IS NOT NULL AND erased_at IS NULL"),
        ),
        Index(
            "uq_contacts_org_id_wa_id",
            "org_id",
            "wa_id",
            unique=True,
            postgresql_where=text("wa_id IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=text("wa_id IS NOT NULL AND erased_at IS NULL"),
        ),
        Index(None, "org_id", "name"),
        *_SEARCH_INDEXES,
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    wa_id: str | None = Field(default=None, max_length=32)
    user_id: str | None = Field(default=None, max_length=128)
    username: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=256)
    profile_name: str | None = Field(default=None, max_length=256)
    name_set_by_team: bool = Field(default=False, nullable=False)
    phone_number: str | None = Field(default=None, max_length=32)
    opted_out: bool = Field(default=False, nullable=False)
    opted_out_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    # The erasure tombstone: set at once by `eraseContact`, the row hidden everywhere by
    # the scoping layer until the worker deletes it (weflux.lifecycle.erasure).
    erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# `update_seq`: set by the database on PostgreSQL (a trigger) and read back with RETURNING;
# on SQLite the flush sets it (weflux.auth.scoping).
FEED_COLUMN: dict[str, Any] = {
    "server_default": "0",
    "server_onupdate": FetchedValue(),
    "nullable": False,
}


# The inbox list's order (weflux.services.conversations: last activity first, undated
# last, then id), one index per part a page is read in, each walked from the cursor for
# a page and no further (migration 0023). PostgreSQL: partial indexes of the listed
# conversations in that order (its ascending indexes read backwards give NULLS FIRST, so
# it sorted every visible conversation for each page): the workspace, one status, one
# assignee (an Agent's own), nobody's. SQLite (no NULLS LAST in an index) reads ascending
# indexes backwards, which is that order (NULLs lowest): the workspace, one status, one
# assignee (`IS NULL` seeks there too). The migration also gives PostgreSQL extended
# statistics of (org_id, assignee_membership_id), which no model can declare. A status
# within an assignee's conversations (an Agent's parts with a status, OPEN + ME, OPEN +
# UNASSIGNED) is one range of its own index (migration 0031); PostgreSQL takes no order
# from a column fixed by `IS NULL`, so nobody's has its own.
_NEWEST_FIRST = (text("last_message_at DESC NULLS LAST"), text("id DESC"))
_LISTED = "erased_at IS NULL"
_INBOX_ORDER_INDEXES = (
    *(
        Index(name, "org_id", *columns, *_NEWEST_FIRST, postgresql_where=text(where)).ddl_if(
            dialect="postgresql"
        )
        for name, columns, where in (
            ("ix_conversations_inbox_order", (), _LISTED),
            ("ix_conversations_inbox_order_status", ("status",), _LISTED),
            ("ix_conversations_inbox_order_assignee", ("assignee_membership_id",), _LISTED),
            (
                "ix_conversations_inbox_order_unassigned",
                (),
                f"{_LISTED} AND assignee_membership_id IS NULL",
            ),
            (
                "ix_conversations_inbox_order_assignee_status",
                ("assignee_membership_id", "status"),
                _LISTED,
            ),
            (
                "ix_conversations_inbox_order_unassigned_status",
                ("status",),
                f"{_LISTED} AND assignee_membership_id IS NULL",
            ),
        )
    ),
    *(
        Index(None, "org_id", *columns, "last_message_at", "id").ddl_if(dialect="sqlite")
        for columns in (
            (),
            ("status",),
            ("assignee_membership_id",),
            ("assignee_membership_id", "status"),
        )
    ),
)


class Conversation(OrgScoped, table=True):
    """The thread between one contact and one of the workspace's numbers."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index(
            "uq_conversations_org_id_contact_id_account_id",
            "org_id",
            "contact_id",
            "account_id",
            unique=True,
        ),
        # The inbox counts (weflux.services.inbox_counts): one statement groups the visible
        # conversations that are not erased by assignee; an Agent's visibility rule
        # (assignee = me OR assignee IS NULL) seeks on the second column, and status and
        # unread_count are read from the index alone.
        Index(
            "ix_conversations_inbox_counts",
            "org_id",
            "assignee_membership_id",
            "status",
            "unread_count",
            postgresql_where=text("erased_at IS NULL"),
            sqlite_where=text("erased_at IS NULL"),
        ),
        *_INBOX_ORDER_INDEXES,
        Index(None, "org_id", "update_seq"),
        # The tombstones the scoping layer hides messages of: few, so the index is tiny.
        # Covering (`erased_at` in it): else SQLite's planner, without statistics, takes
        # `ix_conversations_org_id_update_seq` for `org_id = ? AND erased_at IS NOT NULL`
        # and reads every conversation of the workspace (migration 0022).
        Index(
            "ix_conversations_erased",
            "org_id",
            "erased_at",
            "id",
            postgresql_where=text("erased_at IS NOT NULL"),
            sqlite_where=text("erased_at IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    contact_id: uuid.UUID = Field(foreign_key="contacts.id", nullable=False, ondelete="CASCADE")
    account_id: uuid.UUID = Field(
        foreign_key="whatsapp_accounts.id", nullable=False, ondelete="CASCADE"
    )
    status: ConversationStatus = Field(
        default=ConversationStatus.OPEN, sa_type=_enum(ConversationStatus, "conversation_status")
    )
    assignee_membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    unread_count: int = Field(default=0, nullable=False)
    last_message_id: uuid.UUID | None = Field(default=None)
    last_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_inbound_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # as its contact's
    # Its latest change's position in the workspace's change feed (set on every flush that
    # changes it, in the same statement: weflux.auth.scoping, docs/realtime.md).
    update_seq: int = Field(default=None, sa_type=BigInteger, sa_column_kwargs=FEED_COLUMN)


class Message(OrgScoped, table=True):
    """One message, inbound or outbound. An outbound row is also the delivery outbox."""

    __tablename__ = "messages"
    __table_args__ = (
        Index(None, "org_id", "conversation_id", "id"),
        Index(None, "org_id", "update_seq"),
        Index(
            "uq_messages_org_id_wa_message_id",
            "org_id",
            "wa_message_id",
            unique=True,
            postgresql_where=text("wa_message_id IS NOT NULL"),
            sqlite_where=text("wa_message_id IS NOT NULL"),
        ),
        Index(
            "uq_messages_org_id_client_message_id",
            "org_id",
            "client_message_id",
            unique=True,
            postgresql_where=text("client_message_id IS NOT NULL"),
            sqlite_where=text("client_message_id IS NOT NULL"),
        ),
        # Whether another message still carries an upload (weflux.lifecycle.erasure).
        Index(
            "ix_messages_org_id_media_file_id",
            "org_id",
            "media_file_id",
            postgresql_where=text("media_file_id IS NOT NULL"),
            sqlite_where=text("media_file_id IS NOT NULL"),
        ),
        # The delivery worker's path, across workspaces: due outbound work.
        Index(
            "ix_messages_outbox",
            "next_attempt_at",
            postgresql_where=text("status IN ('QUEUED', 'SENDING')"),
            sqlite_where=text("status IN ('QUEUED', 'SENDING')"),
        ),
        # Messages in flight, whose due ones are the suspects the worker claims alone.
        Index(
            "ix_messages_in_flight",
            "next_attempt_at",
            postgresql_where=text("status = 'SENDING' AND wa_message_id IS NULL"),
            sqlite_where=text("status = 'SENDING' AND wa_message_id IS NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID = Field(
        foreign_key="conversations.id", nullable=False, ondelete="CASCADE"
    )
    direction: MessageDirection = Field(sa_type=_enum(MessageDirection, "message_direction"))
    type: str = Field(max_length=32, nullable=False)
    text: str | None = Field(default=None, sa_type=Text)
    media: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    payload: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    status: MessageStatus = Field(sa_type=_enum(MessageStatus, "message_status"))
    error_code: int | None = Field(default=None)
    error_title: str | None = Field(default=None, max_length=500)
    wa_message_id: str | None = Field(default=None, max_length=128)
    client_message_id: str | None = Field(default=None, max_length=128)
    reply_to_wa_message_id: str | None = Field(default=None, max_length=128)
    # The media file it carries (weflux.models.media): an inbound file, or an upload sent
    # with sendMedia. No foreign key: added to a parent table without a rebuild.
    media_file_id: uuid.UUID | None = Field(default=None)
    sent_by_membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    status_updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # As Conversation.update_seq: its latest visible change's position in the feed.
    update_seq: int = Field(default=None, sa_type=BigInteger, sa_column_kwargs=FEED_COLUMN)
    # Its creation's position: changed since when update_seq is above it (messageUpdated).
    created_seq: int = Field(default=None, sa_type=BigInteger, sa_column_kwargs=FEED_COLUMN)


def listed_message() -> Any:
    """The criterion of the messages a history lists: all but the team's queued reactions
    (and reactions stored as messages before they attached to theirs)."""
    return Message.type != MessageType.REACTION.value


class TemplateStatusEvent(OrgScoped, table=True):
    """A template's review outcome as Meta reported it."""

    __tablename__ = "template_status_events"
    __table_args__ = (Index(None, "org_id", "created_at"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    business_account_id: str = Field(max_length=64, nullable=False)
    template_id: str | None = Field(default=None, max_length=64)
    template_name: str | None = Field(default=None, max_length=512)
    language: str | None = Field(default=None, max_length=16)
    event: str = Field(max_length=64, nullable=False)
    reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_at_field()


class WebhookEventStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"  # retried by the sweep after a backoff (or an attempt under way)
    PARKED = "PARKED"  # failed `WEFLUX_WEBHOOK_MAX_ATTEMPTS` times: only a replay retries it


class WebhookEvent(SQLModel, table=True):
    """A verified webhook body exactly as received, written before Meta gets its 200.

    Platform-level, not workspace-owned: one body may concern several workspaces, and
    which ones is only known once it is parsed. On PostgreSQL the app's role sees only
    the event a transaction names (`db.session(webhook_event=…)`, docs/security/tenancy.md).
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index(None, "received_at"),
        Index(None, "processed_at"),  # retention of raw bodies (weflux.lifecycle.worker)
        Index(
            "ix_webhook_events_due",
            "next_attempt_at",
            postgresql_where=text("status != 'PROCESSED'"),
            sqlite_where=text("status != 'PROCESSED'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    received_at: datetime = created_at_field()
    account_id: uuid.UUID | None = Field(default=None)  # set for the keyed (per-channel) URL
    body: bytes = Field(sa_type=LargeBinary, nullable=False)
    body_sha256: str = Field(max_length=64, nullable=False)
    status: WebhookEventStatus = Field(
        default=WebhookEventStatus.PENDING, sa_type=_enum(WebhookEventStatus, "webhook_status")
    )
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = Field(default=None, max_length=1000)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
