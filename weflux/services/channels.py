"""WhatsApp channels: connect, rotate credentials, disconnect, health and limits.

Credentials are write-only: they arrive in plaintext, are sealed at once (AES-256-GCM,
bound to workspace, table, column and row) and are opened again only to call Meta.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.crypto.fields import open_secret, seal
from weflux.crypto.keyring import DecryptionError, KeyRing
from weflux.errors import BadUserInput, Conflict, NotFound, Unavailable, WefluxError
from weflux.media.store import MediaStore
from weflux.models import AccountStatus, WhatsAppAccount, utcnow
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.sandbox.channels import PRODUCTION_REFUSAL, Sandbox, SandboxChannel
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.sessions import refuse_while_deleting
from weflux.whatsapp.client import CloudApiClient, PhoneNumberHealth
from weflux.whatsapp.errors import ErrorKind, MetaApiError

log = logging.getLogger(__name__)

WEBHOOK_PREFIX = "/webhooks/whatsapp/"
_GRAPH_ID = re.compile(r"^\d{1,32}$")
_STATUS = {
    "CONNECTED": AccountStatus.CONNECTED,
    "FLAGGED": AccountStatus.FLAGGED,
    "RESTRICTED": AccountStatus.RESTRICTED,
    "RATE_LIMITED": AccountStatus.RESTRICTED,
    "BANNED": AccountStatus.BANNED,
    "DELETED": AccountStatus.BANNED,
    "DISABLED": AccountStatus.BANNED,
}


class UpstreamUnavailable(Unavailable):
    """Meta could not be reached or asked us to slow down; nothing was changed."""


@dataclass(frozen=True)
class Services:
    """What channel operations need besides the session."""

    keyring: KeyRing
    cloud: CloudApiClient
    broker: Broker
    # The in-process Cloud API of sandbox channels; None in production (weflux.sandbox).
    sandbox: Sandbox | None = None
    # Where media files are stored (weflux.media): uploads, and what delivery sends.
    media: MediaStore | None = None

    def cloud_for(self, account: WhatsAppAccount) -> CloudApiClient:
        """Meta's client, or the sandbox's for a sandbox channel (SandboxRefused without one).

        Raises DecryptionError when the channel's app secret cannot be opened.
        """
        if not account.sandbox:
            return self.cloud
        if self.sandbox is None:
            raise SandboxRefused(PRODUCTION_REFUSAL)
        self.sandbox.know(account.phone_number_id)
        app_secret = open_secret(self.keyring, account, "app_secret_enc")
        if app_secret is not None:
            self.sandbox.register(
                SandboxChannel(
                    phone_number_id=account.phone_number_id,
                    business_account_id=account.business_account_id,
                    display_phone_number=account.display_phone_number,
                    webhook_key=account.webhook_key,
                    app_secret=app_secret.reveal(),
                )
            )
        return self.sandbox.client


class SandboxRefused(Conflict):
    """A sandbox channel, where no sandbox runs (production)."""


def webhook_path(account: WhatsAppAccount) -> str:
    return WEBHOOK_PREFIX + account.webhook_key


def _field_error(field: str, message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": field, "message": message}])


def _graph_id(value: str, field: str) -> str:
    value = value.strip()
    if not _GRAPH_ID.match(value):
        raise _field_error(field, f"`{field}` must be the numeric id Meta shows")
    return value


def _secret_input(value: str | None, field: str, *, required: bool = False) -> str | None:
    if value is None or not value.strip():
        if required:
            raise _field_error(field, f"`{field}` is required")
        return None
    value = value.strip()
    if len(value) > 4096 or any(ord(c) < 32 for c in value):
        raise _field_error(field, f"`{field}` is not a valid credential")
    return value


def _meta_failure(error: MetaApiError, field: str, what: str) -> WefluxError:
    """What a user is told when Meta refuses a credential check (never the token)."""
    if error.kind == ErrorKind.TOKEN_INVALID:
        return _field_error("accessToken", "Meta rejected the access token (access token rejected)")
    if error.kind in (ErrorKind.RETRYABLE, ErrorKind.RATE_LIMITED):
        return UpstreamUnavailable("Meta could not be reached; try again in a moment")
    return _field_error(field, f"Meta refused the request for {what} ({error.code}: {error.title})")


def apply_health(account: WhatsAppAccount, health: PhoneNumberHealth) -> None:
    account.quality_rating = health.quality_rating
    account.messaging_limit_tier = health.messaging_limit_tier
    account.throughput_level = health.throughput_level
    account.verified_name = health.verified_name or account.verified_name
    account.status = _STATUS.get((health.status or "CONNECTED").upper(), AccountStatus.UNKNOWN)
    account.status_detail = None
    account.health_checked_at = utcnow()


def apply_health_error(account: WhatsAppAccount, error: MetaApiError) -> None:
    """Record what a failed health check says about the account."""
    account.health_checked_at = utcnow()
    if error.kind == ErrorKind.TOKEN_INVALID:
        account.status = AccountStatus.TOKEN_INVALID
        account.status_detail = "Meta rejected the access token; update the credentials"


async def list_accounts(
    session: AsyncSession, *, disconnected: bool | None = False
) -> Sequence[WhatsAppAccount]:
    """The workspace's numbers, oldest first: live ones (`disconnected=False`), the
    disconnected ones (True), or both (None)."""
    query = select(WhatsAppAccount).order_by(
        col(WhatsAppAccount.created_at), col(WhatsAppAccount.id)
    )
    if disconnected is not None:
        since = col(WhatsAppAccount.disconnected_at)
        query = query.where(since.is_not(None) if disconnected else since.is_(None))
    return (await session.exec(query)).all()


async def get_live_account(session: AsyncSession, account_id: uuid.UUID) -> WhatsAppAccount:
    account = await session.get(WhatsAppAccount, account_id)
    if account is None or account.disconnected_at is not None:
        raise NotFound("WhatsApp account not found")
    return account


async def _check_with_meta(
    cloud: CloudApiClient, business_account_id: str, phone_number_id: str, access_token: str
) -> PhoneNumberHealth:
    """The number's health, once Meta shows that the token sees it in the business account.

    The business account routes its account and quality webhooks (ingest), so a number
    is stored only under a business account that lists it for this token. `cloud` is
    Meta's client, or the sandbox's for a sandbox channel (`Services.cloud_for`).
    """
    try:
        listed = await cloud.lists_phone_number(business_account_id, phone_number_id, access_token)
    except MetaApiError as error:
        raise _meta_failure(
            error, "businessAccountId", "this WhatsApp Business Account's phone numbers"
        ) from None
    if not listed:
        raise _field_error(
            "phoneNumberId",
            "Meta does not list this phone number under that WhatsApp Business Account "
            "for this access token",
        )
    try:
        return await cloud.phone_number_health(phone_number_id, access_token)
    except MetaApiError as error:
        raise _meta_failure(error, "phoneNumberId", "this phone number") from None


async def connect(
    session: AsyncSession,
    services: Services,
    principal: Principal,
    meta: RequestMeta,
    *,
    display_phone_number: str,
    phone_number_id: str,
    business_account_id: str,
    access_token: str,
    app_secret: str | None,
    webhook_verify_token: str | None,
) -> WhatsAppAccount:
    """Store a number and its sealed secrets once Meta lists it in the business account."""
    principal.require(Permission.MANAGE_CHANNELS)
    phone_number_id = _graph_id(phone_number_id, "phoneNumberId")
    business_account_id = _graph_id(business_account_id, "businessAccountId")
    display = display_phone_number.strip()
    if not display or len(display) > 32:
        raise _field_error("displayPhoneNumber", "`displayPhoneNumber` must be 1 to 32 characters")
    token = _secret_input(access_token, "accessToken", required=True)
    assert token is not None
    app_secret = _secret_input(app_secret, "appSecret")
    verify_token = _secret_input(webhook_verify_token, "webhookVerifyToken")
    health = await _check_with_meta(services.cloud, business_account_id, phone_number_id, token)
    await refuse_while_deleting(session, principal.org_id)

    now = utcnow()
    account = WhatsAppAccount(
        org_id=principal.org_id,
        display_phone_number=display,
        phone_number_id=phone_number_id,
        business_account_id=business_account_id,
        webhook_key=secrets.token_urlsafe(24),
        credentials_updated_at=now,
    )
    seal(services.keyring, account, "access_token_enc", token)
    seal(services.keyring, account, "app_secret_enc", app_secret)
    seal(services.keyring, account, "webhook_verify_token_enc", verify_token)
    apply_health(account, health)
    session.add(account)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict("This phone number is connected to a workspace already") from None
    await record(
        session,
        Action.WHATSAPP_ACCOUNT_CONNECTED,
        actor=principal,
        target_type="WhatsAppAccount",
        target_id=account.id,
        meta=meta,
        details={"phone_number_id": phone_number_id},
    )
    publish_after_commit(
        session,
        services.broker,
        principal.org_id,
        EventName.WHATSAPP_ACCOUNT_UPDATED,
        id=account.id,
    )
    return account


async def update_credentials(
    session: AsyncSession,
    services: Services,
    principal: Principal,
    meta: RequestMeta,
    *,
    account_id: uuid.UUID,
    access_token: str | None,
    app_secret: str | None,
    webhook_verify_token: str | None,
) -> WhatsAppAccount:
    """Replace credentials; a new access token must see the number in its business account."""
    principal.require(Permission.MANAGE_CHANNELS)
    account = await get_live_account(session, account_id)
    token = _secret_input(access_token, "accessToken")
    app_secret = _secret_input(app_secret, "appSecret")
    verify_token = _secret_input(webhook_verify_token, "webhookVerifyToken")
    changed = {
        name: value
        for name, value in (
            ("access_token_enc", token),
            ("app_secret_enc", app_secret),
            ("webhook_verify_token_enc", verify_token),
        )
        if value is not None
    }
    if not changed:
        raise BadUserInput("Give at least one credential to update")
    if token is not None:
        health = await _check_with_meta(
            services.cloud_for(account),
            account.business_account_id,
            account.phone_number_id,
            token,
        )
        apply_health(account, health)
    await refuse_while_deleting(session, principal.org_id)
    for column, value in changed.items():
        seal(services.keyring, account, column, value)
    account.credentials_updated_at = utcnow()
    await session.flush()
    await record(
        session,
        Action.WHATSAPP_ACCOUNT_CREDENTIALS_UPDATED,
        actor=principal,
        target_type="WhatsAppAccount",
        target_id=account.id,
        meta=meta,
        details={"updated": sorted(column.removesuffix("_enc") for column in changed)},
    )
    await record_security_event(
        session,
        services.broker,
        SecurityKind.CREDENTIALS_CHANGED,
        "The credentials of a WhatsApp number were changed",
        actor=Actor(principal.user_id, principal.membership_id),
        meta=meta,
        details={
            "whatsapp_account_id": str(account.id),
            "updated": sorted(column.removesuffix("_enc") for column in changed),
        },
    )
    publish_after_commit(
        session,
        services.broker,
        principal.org_id,
        EventName.WHATSAPP_ACCOUNT_UPDATED,
        id=account.id,
    )
    return account


async def disconnect(
    session: AsyncSession,
    services: Services,
    principal: Principal,
    meta: RequestMeta,
    *,
    account_id: uuid.UUID,
) -> WhatsAppAccount:
    """Keep the number's history, destroy its credentials; the account, DISCONNECTED."""
    principal.require(Permission.MANAGE_CHANNELS)
    account = await get_live_account(session, account_id)
    account.access_token_enc = None
    account.app_secret_enc = None
    account.webhook_verify_token_enc = None
    account.disconnected_at = utcnow()
    account.status = AccountStatus.DISCONNECTED
    await session.flush()
    await record(
        session,
        Action.WHATSAPP_ACCOUNT_DISCONNECTED,
        actor=principal,
        target_type="WhatsAppAccount",
        target_id=account.id,
        meta=meta,
    )
    publish_after_commit(
        session,
        services.broker,
        principal.org_id,
        EventName.WHATSAPP_ACCOUNT_UPDATED,
        id=account.id,
    )
    return account


async def refresh_health(
    session: AsyncSession,
    services: Services,
    account: WhatsAppAccount,
) -> WhatsAppAccount:
    """Re-read quality rating, limit tier and status from Meta (worker and on demand)."""
    try:
        token = open_secret(services.keyring, account, "access_token_enc")
    except DecryptionError as error:
        log.error(
            "stored access token unusable", extra={"account": str(account.id), "why": str(error)}
        )
        raise Conflict(
            "The stored access token cannot be decrypted; update the credentials"
        ) from None
    if token is None:
        raise Conflict("This account has no access token; update its credentials")
    try:
        cloud = services.cloud_for(account)
    except SandboxRefused:
        log.error("sandbox channel in production", extra={"account": str(account.id)})
        raise
    except DecryptionError as error:
        log.error(
            "stored app secret unusable", extra={"account": str(account.id), "why": str(error)}
        )
        raise Conflict(
            "The stored app secret cannot be decrypted; update the credentials"
        ) from None
    try:
        health = await cloud.phone_number_health(account.phone_number_id, token.reveal())
    except MetaApiError as error:
        apply_health_error(account, error)
        await session.flush()
        publish_after_commit(
            session,
            services.broker,
            account.org_id,
            EventName.WHATSAPP_ACCOUNT_UPDATED,
            id=account.id,
        )
        if error.kind == ErrorKind.TOKEN_INVALID:
            return account
        raise UpstreamUnavailable("Meta could not be reached; try again in a moment") from None
    apply_health(account, health)
    await session.flush()
    publish_after_commit(
        session, services.broker, account.org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
    )
    return account


async def refresh_health_on_demand(
    session: AsyncSession, services: Services, principal: Principal, account_id: uuid.UUID
) -> WhatsAppAccount:
    principal.require(Permission.REFRESH_CHANNEL_HEALTH)
    account = await get_live_account(session, account_id)
    return await refresh_health(session, services, account)
