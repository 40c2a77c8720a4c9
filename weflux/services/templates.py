"""Message templates: synced from Meta, kept current by webhooks, checked before a send.

`sync` reads every page of `GET /{waba-id}/message_templates` and replaces the number's
rows (one per name and language; templates Meta no longer lists are removed). The worker
syncs each connected number once a day (with its health refresh, `TEMPLATE_SYNC_EVERY`)
and `syncMessageTemplates` on demand. A `message_template_status_update` webhook changes
the status of the row it names; one we do not know yet marks the number due for a sync.

`check_sendable` is what `sendTemplateMessage` and `startConversation` ask before
queueing: when templates are known for the number, the template must be listed, APPROVED,
and given exactly `parameter_count` body parameters (BAD_USER_INPUT otherwise). When none
are known (never synced, or Meta unreachable so far), Meta is left to judge at send time.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import DecryptionError
from weflux.errors import BadUserInput, Conflict, NotFound
from weflux.models import MessageTemplate, WhatsAppAccount, utcnow
from weflux.services.channels import Services, UpstreamUnavailable
from weflux.whatsapp.errors import MetaApiError
from weflux.whatsapp.parser import TemplateStatusUpdate

log = logging.getLogger(__name__)

APPROVED = "APPROVED"
TEMPLATE_SYNC_EVERY = timedelta(hours=24)
# {{1}}, {{2}}... (and named parameters, {{first_name}}): each distinct one counts once.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
# What a status webhook's `event` means for the template's status.
_EVENT_STATUS = {"REINSTATED": APPROVED, "UNPAUSED": APPROVED}


def parameter_count(body_text: str | None) -> int:
    """How many body parameters a template's body text takes (distinct {{n}} placeholders)."""
    if not body_text:
        return 0
    return len(set(_PLACEHOLDER.findall(body_text)))


def _field_error(field: str, message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": field, "message": message}])


async def _account(session: AsyncSession, account_id: uuid.UUID) -> WhatsAppAccount:
    # The session is scoped to the workspace: another's account reads as absent.
    account = await session.get(WhatsAppAccount, account_id)
    if account is None:
        raise NotFound("WhatsApp account not found")
    return account


async def list_templates(
    session: AsyncSession, account_id: uuid.UUID, *, status: str | None = None
) -> Sequence[MessageTemplate]:
    """A number's known templates by name and language, optionally of one status."""
    await _account(session, account_id)
    query = select(MessageTemplate).where(MessageTemplate.account_id == account_id)
    if status is not None:
        query = query.where(MessageTemplate.status == status.strip().upper())
    query = query.order_by(col(MessageTemplate.name), col(MessageTemplate.language))
    return (await session.exec(query)).all()


async def sync(
    session: AsyncSession, services: Services, account: WhatsAppAccount
) -> Sequence[MessageTemplate]:
    """Replace the number's templates with what Meta lists now (every page)."""
    try:
        token = open_secret(services.keyring, account, "access_token_enc")
    except DecryptionError:
        raise Conflict(
            "The stored access token cannot be decrypted; update the credentials"
        ) from None
    if token is None:
        raise Conflict("This account has no access token; update its credentials")
    try:
        cloud = services.cloud_for(account)  # a sandbox channel's in-process Cloud API
    except DecryptionError:
        raise Conflict(
            "The stored app secret cannot be decrypted; update the credentials"
        ) from None
    try:
        listed = await cloud.message_templates(account.business_account_id, token.reveal())
    except MetaApiError:
        raise UpstreamUnavailable(
            "Meta did not list the templates; try again in a moment"
        ) from None
    existing = {
        (row.name, row.language): row
        for row in (
            await session.exec(
                select(MessageTemplate).where(MessageTemplate.account_id == account.id)
            )
        ).all()
    }
    now = utcnow()
    kept: set[uuid.UUID] = set()
    for info in listed:
        row = existing.get((info.name, info.language))
        if row is None:
            row = MessageTemplate(
                org_id=account.org_id, account_id=account.id, name=info.name, language=info.language
            )
            existing[(info.name, info.language)] = row
        row.meta_template_id = info.meta_template_id
        row.category = info.category
        row.status = info.status
        row.body_text = info.body_text
        row.parameter_count = parameter_count(info.body_text)
        row.updated_at = now
        session.add(row)
        kept.add(row.id)
    await session.flush()
    gone = [row.id for row in existing.values() if row.id not in kept]
    if gone:
        await session.exec(delete(MessageTemplate).where(col(MessageTemplate.id).in_(gone)))
    account.templates_synced_at = now
    session.add(account)
    await session.flush()
    log.info(
        "templates synced",
        extra={"account": str(account.id), "templates": len(kept), "removed": len(gone)},
    )
    return await list_templates(session, account.id)


async def sync_on_demand(
    session: AsyncSession, services: Services, principal: Principal, account_id: uuid.UUID
) -> Sequence[MessageTemplate]:
    """`syncMessageTemplates`: ADMIN and MANAGER (as a health refresh), live numbers only."""
    principal.require(Permission.REFRESH_CHANNEL_HEALTH)
    account = await _account(session, account_id)
    if account.disconnected_at is not None:
        raise NotFound("WhatsApp account not found")
    return await sync(session, services, account)


async def apply_status_update(session: AsyncSession, update: TemplateStatusUpdate) -> None:
    """A status webhook, in its workspace's session: the named template's new status.

    Matched by Meta's template id, else by name and language, on every number of the
    business account. A template not known yet makes the numbers due for a sync.
    """
    accounts = (
        await session.exec(
            select(WhatsAppAccount).where(
                WhatsAppAccount.business_account_id == update.waba_id,
                col(WhatsAppAccount.disconnected_at).is_(None),
            )
        )
    ).all()
    status = _EVENT_STATUS.get(update.event.upper(), update.event.upper())[:32]
    now = utcnow()
    for account in accounts:
        query = select(MessageTemplate).where(MessageTemplate.account_id == account.id)
        if update.template_id is not None:
            query = query.where(MessageTemplate.meta_template_id == update.template_id)
        elif update.template_name is not None and update.language is not None:
            query = query.where(
                MessageTemplate.name == update.template_name,
                MessageTemplate.language == update.language,
            )
        else:
            continue
        rows = (await session.exec(query)).all()
        if not rows:
            account.templates_synced_at = None  # the worker reads the new one soon
            session.add(account)
        for row in rows:
            row.status = status
            row.updated_at = now
            session.add(row)


async def check_sendable(
    session: AsyncSession,
    account_id: uuid.UUID,
    name: str,
    language: str,
    body_parameters: list[str],
) -> None:
    """BAD_USER_INPUT unless the template may be sent as asked (see the module's text)."""
    known = (
        await session.exec(
            select(MessageTemplate.id).where(MessageTemplate.account_id == account_id).limit(1)
        )
    ).first()
    if known is None:
        return
    row = (
        await session.exec(
            select(MessageTemplate).where(
                MessageTemplate.account_id == account_id,
                MessageTemplate.name == name,
                MessageTemplate.language == language,
            )
        )
    ).first()
    if row is None:
        raise _field_error(
            "templateName",
            f"This number has no template {name} in {language}; sync its templates if it "
            "was just created",
        )
    if row.status != APPROVED:
        raise _field_error(
            "templateName",
            f"The template {name} ({language}) is {row.status}, not APPROVED; WhatsApp only "
            "sends approved templates",
        )
    if len(body_parameters) != row.parameter_count:
        raise _field_error(
            "bodyParameters",
            f"The template {name} ({language}) takes {row.parameter_count} body "
            f"parameter(s), not {len(body_parameters)}",
        )
