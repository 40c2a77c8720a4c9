"""Quotas on paid sends: templates per workspace and member, and a number's messaging tier.

Templates cost the workspace money, so `template_sends_workspace` and
`template_sends_member` (named limits of `weflux.throttle.ratelimit`,
`WEFLUX_RATE_LIMIT_TEMPLATE_SENDS_*`) count every template queued, by `sendTemplateMessage`
and `startConversation` alike; over either, RATE_LIMITED with the seconds to wait.

Meta limits how many customers a number may start conversations with in 24 hours (its
messaging-limit tier, `WhatsAppAccount.messagingLimitTier`). A template sent while the
customer's 24-hour window is closed starts such a conversation; once the number has
reached its tier in distinct customers over the last 24 hours, a new one is RATE_LIMITED
here instead of FAILED at Meta. The local count is conservative: every customer sent a
template in the last 24 hours counts, also one whose window was open.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.principal import Principal
from weflux.auth.scoping import workspace_wide
from weflux.errors import RateLimited
from weflux.models import Conversation, Message, MessageDirection, MessageStatus, utcnow
from weflux.throttle.ratelimit import RateLimitDecision, RateLimiter

TIER_WINDOW = timedelta(hours=24)
# Business-initiated conversations (distinct customers) a number may start per 24 hours.
TIER_LIMITS = {
    "TIER_50": 50,
    "TIER_250": 250,
    "TIER_1K": 1_000,
    "TIER_2K": 2_000,
    "TIER_10K": 10_000,
    "TIER_100K": 100_000,
}


def tier_limit(tier: str | None) -> int | None:
    """The number's daily limit; None (no local limit) for TIER_UNLIMITED or unknown."""
    return TIER_LIMITS.get((tier or "").strip().upper())


async def charge_template_send(limiter: RateLimiter | None, principal: Principal) -> None:
    """Count one template against the workspace's and the member's quotas."""
    if limiter is None:
        return
    keys = (
        ("template_sends_workspace", str(principal.org_id)),
        ("template_sends_member", str(principal.membership_id)),
    )
    # Both are tested before either counts, so a send the member's quota refuses does
    # not use up the workspace's.
    for name, key in keys:
        _raise_when_denied(name, await limiter.test(name, key))
    for name, key in keys:
        _raise_when_denied(name, await limiter.hit(name, key))


def _raise_when_denied(name: str, decision: RateLimitDecision) -> None:
    if not decision.allowed:
        who = "this workspace" if name.endswith("workspace") else "you"
        raise RateLimited(
            f"Template sends are limited for {who}; try again in {decision.retry_after} seconds",
            retry_after=decision.retry_after,
        )


async def check_messaging_tier(
    session: AsyncSession, account_id: uuid.UUID, tier: str | None, conversation_id: uuid.UUID
) -> None:
    """RATE_LIMITED when starting a conversation with this customer would pass the tier."""
    limit = tier_limit(tier)
    if limit is None:
        return
    since = utcnow() - TIER_WINDOW
    recent = (
        select(col(Message.conversation_id))
        .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
        .where(
            Conversation.account_id == account_id,
            Message.direction == MessageDirection.OUTBOUND,
            Message.type == "template",
            Message.status != MessageStatus.FAILED,
            col(Message.created_at) >= since,
        )
        .distinct()
    )
    # Counted across the whole workspace, also for an Agent: a number, never a row.
    with workspace_wide(session):
        already = (
            await session.exec(
                select(func.count()).select_from(
                    recent.where(Message.conversation_id == conversation_id).subquery()
                )
            )
        ).one()
        if already:
            return
        started = (await session.exec(select(func.count()).select_from(recent.subquery()))).one()
    if started >= limit:
        raise RateLimited(
            f"This number reached its messaging limit ({tier}: {limit} customers in 24 "
            "hours); WhatsApp would refuse a conversation with a new customer now",
            retry_after=3600,
        )
