"""GraphQL types of channels: never a secret, masked or not."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from weflux import models
from weflux.gql.types import Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.mail import SmtpSecurity
from weflux.models import AccountStatus, QualityRating
from weflux.services.channels import webhook_path

graphql_enum(QualityRating, description="Meta's quality rating of a phone number.")
# Bound under its GraphQL name: the model calls it AccountStatus.
WhatsAppAccountStatus = graphql_enum(
    AccountStatus,
    name="WhatsAppAccountStatus",
    description="Where a WhatsApp number stands with Meta and with the workspace.",
    values={
        AccountStatus.CONNECTED: "Sends and receives.",
        AccountStatus.FLAGGED: "Meta flagged it (low quality); limits may drop.",
        AccountStatus.RESTRICTED: "Meta restricts what it may send for now.",
        AccountStatus.BANNED: "Meta banned, disabled or deleted it.",
        AccountStatus.TOKEN_INVALID: "Meta rejects the access token: update the credentials.",
        AccountStatus.DISCONNECTED: "The workspace disconnected it: no credentials, no "
        "sending; its conversations and messages are kept and it stays readable.",
        AccountStatus.UNKNOWN: "Meta reported a status this API does not know.",
    },
)


@strawberry.enum(description="Which numbers `whatsAppAccounts` lists, by disconnection.")
class DisconnectedFilter(enum.Enum):
    EXCLUDE = strawberry.enum_value("EXCLUDE", description="Connected numbers only.")
    INCLUDE = strawberry.enum_value("INCLUDE", description="Connected and disconnected ones.")
    ONLY = strawberry.enum_value("ONLY", description="Disconnected numbers only.")

    @property
    def only_disconnected(self) -> bool | None:
        """The service's filter: False = connected, True = disconnected, None = both."""
        if self is DisconnectedFilter.INCLUDE:
            return None
        return self is DisconnectedFilter.ONLY


@strawberry.type(
    description="A WhatsApp Business phone number of the workspace, with its health; "
    "a disconnected one (status DISCONNECTED) is kept with its history."
)
class WhatsAppAccount(Node):
    id: strawberry.ID
    display_phone_number: str
    phone_number_id: str
    business_account_id: str
    webhook_path: str = strawberry.field(
        description="The channel's own webhook URL path (its app secret verifies it)."
    )
    quality_rating: QualityRating
    messaging_limit_tier: str | None = strawberry.field(
        description="TIER_250, TIER_2K, TIER_10K, TIER_100K or TIER_UNLIMITED."
    )
    throughput_level: str | None
    verified_name: str | None
    status: AccountStatus = strawberry.field(
        description="Where the number stands: one of the values of WhatsAppAccountStatus, "
        "each described there."
    )
    status_detail: str | None
    health_checked_at: datetime | None
    credentials_updated_at: datetime
    has_app_secret: bool
    has_webhook_verify_token: bool


@strawberry.type(description="The workspace's outgoing mail server (the password is write-only).")
class SmtpSettings:
    host: str
    port: int
    username: str | None
    from_address: str
    security: str = strawberry.field(description=f"One of {', '.join(SmtpSecurity)}.")
    has_password: bool


def _quality(value: str) -> QualityRating:
    try:
        return QualityRating(value)
    except ValueError:
        return QualityRating.UNKNOWN


def _status(row: models.WhatsAppAccount) -> AccountStatus:
    if row.disconnected_at is not None:
        return AccountStatus.DISCONNECTED
    try:
        return AccountStatus(row.status)
    except ValueError:
        return AccountStatus.UNKNOWN


def to_whatsapp_account(row: models.WhatsAppAccount) -> WhatsAppAccount:
    return WhatsAppAccount(
        id=strawberry.ID(encode_global_id("WhatsAppAccount", row.id)),
        display_phone_number=row.display_phone_number,
        phone_number_id=row.phone_number_id,
        business_account_id=row.business_account_id,
        webhook_path=webhook_path(row),
        quality_rating=_quality(row.quality_rating),
        messaging_limit_tier=row.messaging_limit_tier,
        throughput_level=row.throughput_level,
        verified_name=row.verified_name,
        status=_status(row),
        status_detail=row.status_detail,
        health_checked_at=row.health_checked_at,
        credentials_updated_at=row.credentials_updated_at,
        has_app_secret=row.app_secret_enc is not None,
        has_webhook_verify_token=row.webhook_verify_token_enc is not None,
    )


def to_smtp_settings(row: models.SmtpSettings) -> SmtpSettings:
    return SmtpSettings(
        host=row.host,
        port=row.port,
        username=row.username,
        from_address=row.from_address,
        security=row.security,
        has_password=row.password_enc is not None,
    )
