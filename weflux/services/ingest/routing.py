"""Routing a parsed webhook: which workspace each of its parts belongs to."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.crossings import Route
from weflux.services.channel_cache import ChannelCache
from weflux.whatsapp.parser import (
    AccountUpdate,
    InboundMessage,
    ParsedWebhook,
    QualityUpdate,
    StatusUpdate,
    TemplateStatusUpdate,
)

log = logging.getLogger(__name__)


@dataclass
class _Share:
    """The part of one event that concerns one workspace."""

    messages: list[tuple[InboundMessage, Route]] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    templates: list[TemplateStatusUpdate] = field(default_factory=list)
    quality: list[tuple[QualityUpdate, list[Route]]] = field(default_factory=list)
    account: list[tuple[AccountUpdate, list[Route]]] = field(default_factory=list)

    def add(self, other: _Share) -> None:
        """Take in another event's share of the same workspace (a queue worker's batch)."""
        self.messages += other.messages
        self.statuses += other.statuses
        self.templates += other.templates
        self.quality += other.quality
        self.account += other.account


def _digits(value: str | None) -> str:
    return "".join(ch for ch in value or "" if ch.isdigit())


def _route(parsed: ParsedWebhook, routes: Iterable[Route]) -> dict[uuid.UUID, _Share]:
    """Which workspace each part belongs to.

    A number is live in one workspace at most (a unique index), so messages and statuses
    go to its owner. A business account may be shared by several workspaces, each
    having shown Meta lists its number there (weflux.services.channels): its template
    and account updates reach all of them, a quality update the number it names.
    """
    by_phone: dict[str, Route] = {}
    by_waba: dict[str, list[Route]] = defaultdict(list)
    for route in routes:
        by_phone[route.phone_number_id] = route
        by_waba[route.business_account_id].append(route)
    shares: dict[uuid.UUID, _Share] = defaultdict(_Share)
    for message in parsed.messages:
        owner = by_phone.get(message.phone_number_id)
        if owner is None:
            log.warning(
                "webhook message dropped: no live channel has its phone_number_id",
                extra={"phone": message.phone_number_id},
            )
            continue
        shares[owner.org_id].messages.append((message, owner))
    for status in parsed.statuses:
        owner = by_phone.get(status.phone_number_id)
        if owner is None:
            log.warning(
                "webhook status dropped: no live channel has its phone_number_id",
                extra={"phone": status.phone_number_id},
            )
            continue
        shares[owner.org_id].statuses.append(status)
    for template in parsed.template_updates:
        for org_id in {a.org_id for a in by_waba.get(template.waba_id, [])}:
            shares[org_id].templates.append(template)
    for quality in parsed.quality_updates:
        targets = [
            a
            for a in by_waba.get(quality.waba_id, [])
            if not quality.display_phone_number
            or _digits(a.display_phone_number) == _digits(quality.display_phone_number)
        ]
        if not targets:
            log.warning(
                "webhook quality update dropped: no live channel of its business account "
                "has its display number",
                extra={"waba": quality.waba_id},
            )
        for group in _by_workspace(targets):
            shares[group[0].org_id].quality.append((quality, group))
    for update in parsed.account_updates:
        targets = by_waba.get(update.waba_id, [])
        if not targets:
            log.warning(
                "webhook account update dropped: no live channel has its business account",
                extra={"waba": update.waba_id},
            )
        for group in _by_workspace(targets):
            shares[group[0].org_id].account.append((update, group))
    return shares


def _by_workspace(routes: Iterable[Route]) -> list[list[Route]]:
    groups: dict[uuid.UUID, list[Route]] = defaultdict(list)
    for route in routes:
        groups[route.org_id].append(route)
    return list(groups.values())


async def _routes(
    session: AsyncSession,
    parsed: ParsedWebhook,
    keyed_account_id: uuid.UUID | None,
    cache: ChannelCache | None,
) -> list[Route]:
    phones, wabas = parsed.phone_number_ids, parsed.waba_ids

    async def load() -> list[Route]:
        return await crossings.webhook_routes(session, phones, wabas, keyed_account_id)

    if cache is None:
        return await load()
    key = ("routes", frozenset(phones), frozenset(wabas), keyed_account_id)
    routes: list[Route] = await cache.get_or_load(key, load, names=_named_by(keyed_account_id))
    return routes


def _named_by(keyed_account_id: uuid.UUID | None) -> Callable[[list[Route]], list[uuid.UUID]]:
    """The numbers routes are built from: theirs and the keyed one."""

    def names(routes: list[Route]) -> list[uuid.UUID]:
        return [r.account_id for r in routes] + ([keyed_account_id] if keyed_account_id else [])

    return names
