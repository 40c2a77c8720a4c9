"""WhatsApp Business numbers connected to a workspace."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text, false, text
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class AccountStatus(StrEnum):
    """What `WhatsAppAccount.status` may say."""

    CONNECTED = "CONNECTED"
    FLAGGED = "FLAGGED"
    RESTRICTED = "RESTRICTED"
    BANNED = "BANNED"
    TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105
    DISCONNECTED = "DISCONNECTED"
    UNKNOWN = "UNKNOWN"


ACCOUNT_STATUS_MEANINGS: dict[AccountStatus, str] = {
    AccountStatus.CONNECTED: "Sends and receives.",
    AccountStatus.FLAGGED: "Meta flagged it (low quality); limits may drop.",
    AccountStatus.RESTRICTED: "Meta restricts what it may send for now.",
    AccountStatus.BANNED: "Meta banned, disabled or deleted it.",
    AccountStatus.TOKEN_INVALID: "Meta rejects the access token: update the credentials.",
    AccountStatus.DISCONNECTED: "The workspace disconnected it: no credentials, no sending; "
    "its conversations and messages are kept and it stays readable.",
    AccountStatus.UNKNOWN: "Meta reported a status this API does not know.",
}


class QualityRating(StrEnum):
    """A phone number's quality colour; anything Meta sends beyond these reads UNKNOWN."""

    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"
    UNKNOWN = "UNKNOWN"


QUALITY_RATING_MEANINGS: dict[QualityRating, str] = {
    QualityRating.GREEN: "High quality.",
    QualityRating.YELLOW: "Medium quality: recipients block or report it more than usual.",
    QualityRating.RED: "Low quality: the number may be flagged and its limits lowered.",
    QualityRating.UNKNOWN: "Not rated yet, or a rating this API does not know.",
}


class WhatsAppAccount(OrgScoped, table=True):
    """A phone number of the WhatsApp Cloud API, with its encrypted credentials.

    The `*_enc` columns hold AES-256-GCM envelopes (`weflux.crypto`), bound to this
    workspace, table, column and row; nothing else here is secret.
    """

    __tablename__ = "whatsapp_accounts"
    __table_args__ = (
        Index(None, "org_id", "created_at"),
        # One live connection of a number platform-wide; disconnected rows keep history.
        Index(
            "uq_whatsapp_accounts_live_phone_number_id",
            "phone_number_id",
            unique=True,
            postgresql_where=text("disconnected_at IS NULL"),
            sqlite_where=text("disconnected_at IS NULL"),
        ),
        Index(None, "webhook_key", unique=True),
        Index(None, "business_account_id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    display_phone_number: str = Field(max_length=32, nullable=False)
    phone_number_id: str = Field(max_length=64, nullable=False)
    business_account_id: str = Field(max_length=64, nullable=False)
    webhook_key: str = Field(max_length=64, nullable=False)
    access_token_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    app_secret_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    webhook_verify_token_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    credentials_updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    quality_rating: str = Field(default=QualityRating.UNKNOWN, max_length=16, nullable=False)
    messaging_limit_tier: str | None = Field(default=None, max_length=32)
    throughput_level: str | None = Field(default=None, max_length=32)
    verified_name: str | None = Field(default=None, max_length=200)
    status: str = Field(default=AccountStatus.UNKNOWN, max_length=32, nullable=False)
    status_detail: str | None = Field(default=None, max_length=500)
    health_checked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Answered by the in-process Cloud API sandbox (weflux.sandbox), never by Meta;
    # development and test only: production refuses to start with one.
    sandbox: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    templates_synced_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()
    disconnected_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class MessageTemplate(OrgScoped, table=True):
    """A message template of a number's business account, as last read from Meta.

    Synced from `GET /{waba-id}/message_templates` (weflux.services.templates) and kept
    current by `message_template_status_update` webhooks. One row per account, name and
    language, as Meta identifies a template when sending.
    """

    __tablename__ = "message_templates"
    __table_args__ = (Index(None, "org_id", "account_id", "name", "language", unique=True),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    account_id: uuid.UUID = Field(
        foreign_key="whatsapp_accounts.id", nullable=False, ondelete="CASCADE"
    )
    meta_template_id: str | None = Field(default=None, max_length=64)
    name: str = Field(max_length=512, nullable=False)
    language: str = Field(max_length=16, nullable=False)
    category: str = Field(default="UNKNOWN", max_length=32, nullable=False)
    status: str = Field(default="UNKNOWN", max_length=32, nullable=False)
    body_text: str | None = Field(default=None, sa_type=Text)
    parameter_count: int = Field(default=0, nullable=False)
    updated_at: datetime = created_at_field()


class SmtpSettings(OrgScoped, table=True):
    """A workspace's outgoing mail server; the password is an encrypted envelope."""

    __tablename__ = "smtp_settings"
    __table_args__ = (Index(None, "org_id", unique=True),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    host: str = Field(max_length=253, nullable=False)
    port: int = Field(nullable=False)
    username: str | None = Field(default=None, max_length=320)
    password_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    from_address: str = Field(max_length=320, nullable=False)
    security: str = Field(max_length=16, nullable=False)
    updated_at: datetime = created_at_field()
