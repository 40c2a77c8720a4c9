"""Sending security alerts from the outbox: mail to Admins or the user, the signed webhook.

The worker's `security-alerts` job claims due alerts (a lease, so two workers never
send one alert at once), sends each, and marks it sent; a failure is retried with
`exponential_backoff`, without end: an alert is never dropped, only suppressed on
purpose. Admin mail is de-duplicated (one mail per workspace and kind within
`WEFLUX_SECURITY_ALERT_DEDUPE_WINDOW`) and limited (`WEFLUX_SECURITY_ALERT_MAIL_LIMIT`
an hour per workspace), so an attack does not become a mail flood; the event itself
stays in `securityEvents`, and every HIGH or CRITICAL one is still posted to the webhook.

The webhook body is JSON; `X-Weflux-Signature: sha256=<hex HMAC-SHA256 of the exact
body bytes under WEFLUX_SECURITY_ALERT_SECRET>` (docs/security/operations.md shows
how to verify it). Nothing of an alert is logged but its id, channel and failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, update
from sqlmodel import col, select

from weflux.backoff import exponential_backoff
from weflux.config import Settings
from weflux.db import Database
from weflux.mail.mailer import Mailer, compose
from weflux.models import (
    AlertChannel,
    AlertStatus,
    Membership,
    Organization,
    Role,
    SecurityAlert,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Weflux-Signature"
DELIVERY_HEADER = "X-Weflux-Delivery"
LEASE = timedelta(minutes=2)
POST_TIMEOUT_SECONDS = 10.0
BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0
MAIL_LIMIT_WINDOW = timedelta(hours=1)


class AlertFailed(Exception):
    """An alert could not be sent now (it is retried)."""


def alert_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def sign(body: bytes, secret: str) -> str:
    """The `X-Weflux-Signature` value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver does: recompute the HMAC and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


async def _claim(db: Database, batch: int) -> list[SecurityAlert]:
    now = utcnow()
    claimed: list[SecurityAlert] = []
    async with db.session() as session:
        due = (
            await session.exec(
                select(SecurityAlert)
                .where(
                    SecurityAlert.status == AlertStatus.PENDING,
                    col(SecurityAlert.next_attempt_at) <= now,
                )
                .order_by(col(SecurityAlert.next_attempt_at))
                .limit(batch)
            )
        ).all()
        for alert in due:
            result = await session.exec(
                update(SecurityAlert)
                .where(
                    col(SecurityAlert.id) == alert.id,
                    col(SecurityAlert.status) == AlertStatus.PENDING,
                    col(SecurityAlert.next_attempt_at) == alert.next_attempt_at,
                )
                .values(next_attempt_at=now + LEASE)
            )
            if result.rowcount == 1:
                claimed.append(alert)
    return claimed


async def _finish(
    db: Database, alert: SecurityAlert, status: AlertStatus, error: str | None = None
) -> None:
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status == AlertStatus.SENT:
        values["sent_at"] = utcnow()
    async with db.session() as session:
        await session.exec(
            update(SecurityAlert).where(col(SecurityAlert.id) == alert.id).values(**values)
        )


async def _retry_later(db: Database, alert: SecurityAlert, error: str) -> None:
    attempts = alert.attempts + 1
    delay = exponential_backoff(attempts, base=BACKOFF_BASE, cap=BACKOFF_CAP, floor=1.0)
    async with db.session() as session:
        await session.exec(
            update(SecurityAlert)
            .where(col(SecurityAlert.id) == alert.id)
            .values(
                attempts=attempts,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                last_error=error[:500],
            )
        )
    log.warning(
        "security alert not sent; will retry",
        extra={"alert": str(alert.id), "channel": alert.channel, "reason": error[:200]},
    )


async def _suppression(db: Database, settings: Settings, alert: SecurityAlert) -> str | None:
    """Why an Admin mail is not sent (a duplicate, over the limit), or None."""
    now = utcnow()
    async with db.session() as session:
        duplicate = (
            await session.exec(
                select(SecurityAlert.id)
                .where(
                    SecurityAlert.dedupe_key == alert.dedupe_key,
                    SecurityAlert.channel == AlertChannel.ADMIN_MAIL,
                    col(SecurityAlert.sent_at) > now - settings.security_alert_dedupe_window,
                )
                .limit(1)
            )
        ).first()
        if duplicate is not None:
            return "a mail about this kind of event was sent recently"
        sent = (
            await session.exec(
                select(func.count())
                .select_from(SecurityAlert)
                .where(
                    SecurityAlert.audience == alert.audience,
                    SecurityAlert.channel == AlertChannel.ADMIN_MAIL,
                    col(SecurityAlert.sent_at) > now - MAIL_LIMIT_WINDOW,
                )
            )
        ).one()
        if sent >= settings.security_alert_mail_limit:
            return "the workspace's hourly limit of alert mails is reached"
    return None


def _admin_text(settings: Settings, workspace: str, payload: dict[str, Any]) -> tuple[str, str]:
    subject = f"[Weflux security] {payload['severity']}: {payload['summary']}"
    body = (
        f"A security event in your Weflux workspace {workspace}:\n\n"
        f"  {payload['summary']}\n\n"
        f"Kind:        {payload['kind']}\n"
        f"Severity:    {payload['severity']}\n"
        f"When (UTC):  {payload['createdAt']}\n"
        f"IP address:  {payload.get('ipAddress') or 'unknown'}\n\n"
        f"Review and acknowledge it under Security events: {settings.app_base_url}\n\n"
        "You receive this because you are an Admin of the workspace. Further events of "
        "this kind are not mailed again for a while; all of them are listed in the app.\n"
    )
    return subject, body


def _device_text(settings: Settings, payload: dict[str, Any]) -> tuple[str, str]:
    subject = "[Weflux security] A login to your account from a new device"
    body = (
        "Your Weflux account was just used to log in from a device we have not seen "
        "for you recently.\n\n"
        f"When (UTC):  {payload['createdAt']}\n"
        f"IP address:  {payload.get('ipAddress') or 'unknown'}\n"
        f"Browser:     {payload.get('userAgent') or 'unknown'}\n\n"
        "If this was you, there is nothing to do. If not, change your password now and "
        f"end your other sessions: {settings.app_base_url}\n"
    )
    return subject, body


async def _send_mail(mailer: Mailer, to: str, subject: str, body: str) -> None:
    try:
        await mailer.send(compose(mailer, to=to, subject=subject, body=body))
    except Exception as error:  # SmtpError, a timeout, an outbox that cannot be written
        raise AlertFailed(getattr(error, "message", None) or type(error).__name__) from None


async def _admin_mail(
    db: Database, settings: Settings, mailer: Mailer, alert: SecurityAlert
) -> None:
    assert alert.org_id is not None  # Admin mail is only queued for workspace events
    async with db.session(alert.org_id) as session:
        organization = await session.get(Organization, alert.org_id)
        admins = (
            await session.exec(
                select(User.email)
                .join(Membership, col(Membership.user_id) == col(User.id))
                .where(Membership.role == Role.ADMIN)
            )
        ).all()
    workspace = organization.name if organization else "(deleted)"
    subject, body = _admin_text(settings, workspace, alert.payload)
    for address in admins:
        await _send_mail(mailer, address, subject, body)


async def _user_mail(
    db: Database, settings: Settings, mailer: Mailer, alert: SecurityAlert
) -> None:
    assert alert.org_id is not None
    assert alert.recipient_user_id is not None
    async with db.session(alert.org_id) as session:
        user = await session.get(User, alert.recipient_user_id)
    if user is None:
        return  # the account is gone: nobody to tell
    subject, body = _device_text(settings, alert.payload)
    await _send_mail(mailer, user.email, subject, body)


async def _post(settings: Settings, client: httpx.AsyncClient, alert: SecurityAlert) -> None:
    assert settings.security_alert_url is not None
    assert settings.security_alert_secret is not None
    body = alert_body(alert.payload)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, settings.security_alert_secret.get_secret_value()),
        DELIVERY_HEADER: str(alert.id),
    }
    try:
        response = await client.post(settings.security_alert_url, content=body, headers=headers)
    except httpx.HTTPError as error:
        raise AlertFailed(type(error).__name__) from None
    if not 200 <= response.status_code < 300:
        raise AlertFailed(f"HTTP {response.status_code}")


async def send_due_alerts(
    db: Database, settings: Settings, mailer: Mailer, *, batch: int = 50
) -> int:
    """The worker's sweep: send every due alert once; the number handled."""
    alerts = await _claim(db, batch)
    if not alerts:
        return 0
    async with httpx.AsyncClient(timeout=POST_TIMEOUT_SECONDS, follow_redirects=False) as client:
        for alert in alerts:
            await _send_one(db, settings, mailer, client, alert)
    return len(alerts)


async def _send_one(
    db: Database,
    settings: Settings,
    mailer: Mailer,
    client: httpx.AsyncClient,
    alert: SecurityAlert,
) -> None:
    try:
        if alert.channel == AlertChannel.WEBHOOK:
            if settings.security_alert_url is None:
                await _finish(db, alert, AlertStatus.SUPPRESSED, "no WEFLUX_SECURITY_ALERT_URL")
                return
            await _post(settings, client, alert)
        elif alert.channel == AlertChannel.ADMIN_MAIL:
            reason = await _suppression(db, settings, alert)
            if reason is not None:
                await _finish(db, alert, AlertStatus.SUPPRESSED, reason)
                return
            await _admin_mail(db, settings, mailer, alert)
        elif alert.channel == AlertChannel.USER_MAIL:
            await _user_mail(db, settings, mailer, alert)
        else:
            await _finish(db, alert, AlertStatus.SUPPRESSED, f"unknown channel {alert.channel}")
            return
    except AlertFailed as failure:
        await _retry_later(db, alert, str(failure))
        return
    except Exception as error:
        log.exception("security alert failed", extra={"alert": str(alert.id)})
        await _retry_later(db, alert, type(error).__name__)
        return
    await _finish(db, alert, AlertStatus.SENT)
