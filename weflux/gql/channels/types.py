"""GraphQL types of channels: never a secret, masked or not."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from weflux import models
from weflux.gql.types import Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.mail import SmtpSecurity
from weflux.models import (
    ACCOUNT_STATUS_MEANINGS,
    QUALITY_RATING_MEANINGS,
    AccountStatus,
    QualityRating,
)
from weflux.services.channels import webhook_path

graphql_enum(
    QualityRating,
    description="Meta's quality rating of a phone number, from recipients' feedback.",
    values=QUALITY_RATING_MEANINGS,
)
# Bound under its GraphQL name: the model calls it AccountStatus.
WhatsAppAccountStatus = graphql_enum(
    AccountStatus,
    name="WhatsAppAccountStatus",
    description="Where a WhatsApp number stands with Meta and with the workspace.",
    values=ACCOUNT_STATUS_MEANINGS,
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
    id: strawberry.ID = strawberry.field(description="The account's global id.")
    display_phone_number: str = strawberry.field(
        description="The number as the workspace entered it for display (say +1 555 0100)."
    )
    phone_number_id: str = strawberry.field(description="Meta's id of the phone number.")
    business_account_id: str = strawberry.field(
        description="Meta's id of the WhatsApp Business Account (WABA) that owns the number."
    )
    webhook_path: str = strawberry.field(
        description="The channel's own webhook URL path, to give Meta (its app secret "
        "verifies what arrives there)."
    )
    quality_rating: QualityRating = strawberry.field(
        description="Meta's latest quality rating (as of `healthCheckedAt`)."
    )
    messaging_limit_tier: str | None = strawberry.field(
        description="How many contacts it may start conversations with per 24 hours, as "
        "Meta names it: TIER_250, TIER_2K, TIER_10K, TIER_100K or TIER_UNLIMITED; null "
        "until Meta says."
    )
    throughput_level: str | None = strawberry.field(
        description="Meta's messages-per-second level (STANDARD, HIGH, …); null until Meta says."
    )
    verified_name: str | None = strawberry.field(
        description="The business name Meta approved for the number; null until Meta says."
    )
    status: AccountStatus = strawberry.field(
        description="Where the number stands: one of the values of WhatsAppAccountStatus, "
        "each described there."
    )
    status_detail: str | None = strawberry.field(
        description="Why it is in its status, in words, when there is more to say (a "
        "restriction's kind, a rejected token); null otherwise."
    )
    health_checked_at: datetime | None = strawberry.field(
        description="When its health (quality, limit, throughput, status) was last read from "
        "Meta or reported by it; null if never."
    )
    credentials_updated_at: datetime = strawberry.field(
        description="When its credentials were stored or last replaced."
    )
    has_app_secret: bool = strawberry.field(
        description="Whether it has its own app secret (else the platform's verifies its "
        "webhooks). The secret itself is never shown."
    )
    has_webhook_verify_token: bool = strawberry.field(
        description="Whether it has its own webhook verify token (without one, Meta's "
        "subscription handshake on its `webhookPath` fails). The token is never shown."
    )


@strawberry.type(description="The workspace's outgoing mail server (the password is write-only).")
class SmtpSettings:
    host: str = strawberry.field(description="The mail server's host name or address.")
    port: int = strawberry.field(description="Its TCP port (587 for STARTTLS, 465 for TLS).")
    username: str | None = strawberry.field(
        description="The login name; null when the server takes no login."
    )
    from_address: str = strawberry.field(description="The sender address of outgoing mail.")
    security: str = strawberry.field(
        description=f"How the connection is protected: one of {', '.join(SmtpSecurity)}."
    )
    has_password: bool = strawberry.field(
        description="Whether a password is stored. The password itself is never shown."
    )


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
