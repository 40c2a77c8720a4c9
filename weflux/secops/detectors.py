"""Detectors: counters over what the app sees, raising a security event at a threshold.

Each runs in the process that sees its signal and counts in the rate limiter's store
(`RateLimiter.tally`: Redis when `WEFLUX_REDIS_URL` is set, shared by every process;
this process's memory otherwise). A counter is a fixed window from its first count,
and a detector fires when the count *reaches* its threshold, so one attack raises one
event per window, however long it goes on. Modelled on Auth0's attack protection:

- `auth.brute_force`: failed logins for one account from one IP
  (`WEFLUX_SECURITY_BRUTE_FORCE`, 10 an hour), throttled attempts included; one event
  in each of the account's workspaces.
- `auth.credential_stuffing`: failed logins from one IP over many accounts
  (`WEFLUX_SECURITY_CREDENTIAL_STUFFING`, 30 in 15 minutes, over
  `WEFLUX_SECURITY_CREDENTIAL_STUFFING_ACCOUNTS`, 15, accounts); known or not, the
  accounts may be anyone's, so it is a platform event for the operator.
- `auth.new_device`: a login from an IP and user agent not seen for that user within
  `WEFLUX_SECURITY_NEW_DEVICE_WINDOW` (90 days). Only a hash of (user, IP, agent) is
  kept, in the store, for that long; a user's very first login (or the first since the
  store was emptied) teaches the device without an event.
- `webhook.signature_failures`: bad signatures on one webhook URL
  (`WEFLUX_SECURITY_WEBHOOK_SIGNATURE_FAILURES`, 20 an hour), refused ones included.

Events that need no counting (a reused refresh token, an Admin role granted, channel
credentials changed, a disabled second factor, data export, erasure and workspace
deletion requests) are recorded where they happen with `record_security_event`.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.config import Settings, parse_threshold
from weflux.db import Database
from weflux.emails import normalize_email
from weflux.models import Membership
from weflux.realtime.broker import Broker
from weflux.secops.events import Actor, SecurityKind, record_platform_event, record_security_event
from weflux.services.audit import RequestMeta
from weflux.throttle.ratelimit import RateLimiter, per_ip

log = logging.getLogger(__name__)

BRUTE_FORCE = "secops_brute_force"
STUFFING_FAILURES = "secops_stuffing_failures"
STUFFING_PAIR = "secops_stuffing_pair"
STUFFING_ACCOUNTS = "secops_stuffing_accounts"
FIRED = "secops_fired"
DEVICE = "secops_device"
USER_DEVICES = "secops_user_devices"
SIGNATURE_FAILURES = "secops_signature_failures"


def device_key(user_id: uuid.UUID, meta: RequestMeta) -> str:
    """The hash of a user's device (IP and user agent): never stored in the clear."""
    raw = f"{user_id}\n{meta.ip or '-'}\n{meta.user_agent or '-'}"
    return hashlib.sha256(raw.encode()).hexdigest()


class Detectors:
    """The counting detectors of one process, over the rate limiter's store."""

    def __init__(self, settings: Settings, limiter: RateLimiter, broker: Broker) -> None:
        self._limiter = limiter
        self._broker = broker
        self.brute_force = parse_threshold("security_brute_force", settings.security_brute_force)
        self.stuffing = parse_threshold(
            "security_credential_stuffing", settings.security_credential_stuffing
        )
        self.stuffing_accounts = settings.security_credential_stuffing_accounts
        self.signature_failures = parse_threshold(
            "security_webhook_signature_failures", settings.security_webhook_signature_failures
        )
        self.new_device_seconds = int(settings.security_new_device_window.total_seconds())

    async def _once(self, kind: SecurityKind, key: str, seconds: int) -> bool:
        """True for the first caller in a window (in every process sharing the store)."""
        return await self._limiter.tally(FIRED, f"{kind}\n{key}", seconds=seconds) == 1

    async def login_failed(
        self,
        db: Database,
        meta: RequestMeta,
        *,
        email: str,
        user_id: uuid.UUID | None,
        workspaces: list[uuid.UUID],
    ) -> None:
        """Count a failed or refused login (`user_id` None: no such account)."""
        account = normalize_email(email)
        # Counted per network as the per-IP limits are (an IPv6 client: its /64).
        ip = per_ip(meta.ip) if meta.ip is not None else "-"
        if meta.ip is not None:  # without a client IP there is nothing to count per IP
            await self._count_stuffing(db, meta, account, ip)
        if user_id is None or not workspaces:
            return
        threshold, seconds = self.brute_force
        count = await self._limiter.tally(BRUTE_FORCE, f"{account}\n{ip}", seconds=seconds)
        if count != threshold:
            return
        summary = f"{threshold} failed logins for one account from one IP address"
        for org_id in workspaces:
            async with db.session(org_id) as session:
                membership = (
                    await session.exec(select(Membership).where(Membership.user_id == user_id))
                ).first()
                await record_security_event(
                    session,
                    self._broker,
                    SecurityKind.BRUTE_FORCE,
                    summary,
                    actor=Actor(user_id, membership.id if membership else None),
                    meta=meta,
                    details={"failures": count, "window_seconds": seconds},
                )
        log.warning("security event", extra={"kind": SecurityKind.BRUTE_FORCE.value})

    async def _count_stuffing(self, db: Database, meta: RequestMeta, account: str, ip: str) -> None:
        threshold, seconds = self.stuffing
        failures = await self._limiter.tally(STUFFING_FAILURES, ip, seconds=seconds)
        if await self._limiter.tally(STUFFING_PAIR, f"{ip}\n{account}", seconds=seconds) == 1:
            accounts = await self._limiter.tally(STUFFING_ACCOUNTS, ip, seconds=seconds)
        else:
            accounts = await self._limiter.tallied(STUFFING_ACCOUNTS, ip)
        if failures < threshold or accounts < self.stuffing_accounts:
            return
        if not await self._once(SecurityKind.CREDENTIAL_STUFFING, ip, seconds):
            return
        async with db.session() as session:
            await record_platform_event(
                session,
                SecurityKind.CREDENTIAL_STUFFING,
                f"{failures} failed logins over {accounts} accounts from one IP address",
                meta=meta,
                details={"failures": failures, "accounts": accounts, "window_seconds": seconds},
            )
        log.warning("security event", extra={"kind": SecurityKind.CREDENTIAL_STUFFING.value})

    async def login_succeeded(
        self,
        session: AsyncSession,
        meta: RequestMeta,
        *,
        user_id: uuid.UUID,
        membership_id: uuid.UUID,
    ) -> None:
        """Raise `auth.new_device` for a device not seen for the user within the window."""
        device = device_key(user_id, meta)
        key = f"{user_id}\n{device}"
        seconds = self.new_device_seconds
        known = await self._limiter.remembers(DEVICE, key)
        has_devices = await self._limiter.remembers(USER_DEVICES, str(user_id))
        await self._limiter.remember(DEVICE, key, seconds=seconds)
        await self._limiter.remember(USER_DEVICES, str(user_id), seconds=seconds)
        if known or not has_devices:
            return
        await record_security_event(
            session,
            self._broker,
            SecurityKind.NEW_DEVICE,
            "A login from a new device (IP address and browser)",
            actor=Actor(user_id, membership_id),
            meta=meta,
        )

    async def webhook_signature_failed(
        self, db: Database, meta: RequestMeta, *, org_id: uuid.UUID | None, url_key: str
    ) -> None:
        """Count a bad (or refused) webhook signature on one webhook URL."""
        threshold, seconds = self.signature_failures
        count = await self._limiter.tally(SIGNATURE_FAILURES, url_key, seconds=seconds)
        if count != threshold:
            return
        summary = f"{threshold} webhook deliveries with a bad signature on one webhook URL"
        details = {"failures": count, "window_seconds": seconds}
        async with db.session(org_id) as session:
            if org_id is None:
                await record_platform_event(
                    session,
                    SecurityKind.WEBHOOK_SIGNATURE_FAILURES,
                    summary,
                    meta=meta,
                    details=details,
                )
            else:
                await record_security_event(
                    session,
                    self._broker,
                    SecurityKind.WEBHOOK_SIGNATURE_FAILURES,
                    summary,
                    meta=meta,
                    details=details,
                )
