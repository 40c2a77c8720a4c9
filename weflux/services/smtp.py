"""A workspace's SMTP settings: stored with a sealed password, tested for real."""

from __future__ import annotations

from collections.abc import Collection

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.crypto.fields import open_secret, seal
from weflux.crypto.keyring import KeyRing
from weflux.emails import check_email
from weflux.errors import BadUserInput, Conflict
from weflux.mail.smtp import (
    SmtpConfig,
    SmtpSecurity,
    canonical_host,
    check_port_allowed,
    resolve_public_addresses,
    send_test_email,
    validate_smtp_input,
)
from weflux.models import SmtpSettings, utcnow
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.sessions import refuse_while_deleting


async def current(session: AsyncSession, principal: Principal) -> SmtpSettings | None:
    principal.require(Permission.MANAGE_CHANNELS, "Only an Admin can manage SMTP settings")
    return (await session.exec(select(SmtpSettings))).first()


async def update(
    session: AsyncSession,
    keyring: KeyRing,
    principal: Principal,
    meta: RequestMeta,
    *,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    from_address: str,
    security: str,
    allow_private: bool,
    allowed_ports: Collection[int] | None = None,
) -> SmtpSettings:
    """Create or replace the settings; omitting the password keeps the stored one.

    `allowed_ports` (None: any) are the ports the settings may name."""
    principal.require(Permission.MANAGE_CHANNELS, "Only an Admin can manage SMTP settings")
    host = host.strip()
    username = username.strip() if username and username.strip() else None
    validate_smtp_input(host, port, from_address, security, username)
    host = canonical_host(host)
    check_port_allowed(port, allowed_ports)
    if not allow_private:
        if security == SmtpSecurity.NONE and username:
            raise BadUserInput(
                "A password must not travel unencrypted: use STARTTLS or TLS",
                details=[{"field": "security", "message": "use STARTTLS or TLS with a login"}],
            )
        await resolve_public_addresses(host, port)
    await refuse_while_deleting(session, principal.org_id)
    settings = (await session.exec(select(SmtpSettings))).first()
    if settings is None:
        settings = SmtpSettings(
            org_id=principal.org_id,
            host=host,
            port=port,
            from_address=from_address,
            security=security,
        )
        session.add(settings)
    settings.host = host
    settings.port = port
    settings.username = username
    settings.from_address = check_email(from_address, "fromAddress")
    settings.security = SmtpSecurity(security).value
    settings.updated_at = utcnow()
    if password:
        seal(keyring, settings, "password_enc", password)
    await session.flush()
    await record(
        session,
        Action.SMTP_SETTINGS_UPDATED,
        actor=principal,
        target_type="SmtpSettings",
        target_id=settings.id,
        meta=meta,
        details={"host": host, "port": port, "password_changed": bool(password)},
    )
    return settings


async def test_email(
    session: AsyncSession,
    keyring: KeyRing,
    principal: Principal,
    *,
    to: str,
    allow_private: bool,
    allowed_ports: Collection[int] | None,
) -> None:
    """Connect with the stored settings and send one short message to `to`; only to one
    of `allowed_ports` (None: any), which may have changed since the settings were saved."""
    settings = await current(session, principal)
    if settings is None:
        raise Conflict("Save SMTP settings first")
    password = open_secret(keyring, settings, "password_enc")
    config = SmtpConfig(
        host=settings.host,
        port=settings.port,
        username=settings.username,
        password=password.reveal() if password is not None else None,
        from_address=settings.from_address,
        security=SmtpSecurity(settings.security),
    )
    await send_test_email(
        config, check_email(to, "to"), allow_private=allow_private, allowed_ports=allowed_ports
    )
