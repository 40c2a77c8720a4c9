"""Access token -> live session -> membership -> role: the `Principal`, cached and revocable.

Tokens are stateless to carry but every request checks that the session is live and
the membership still exists, and takes the role from the database. A small
in-process cache keeps that cheap; revocations, removals and role changes travel on
the broker (`AUTH_CHANNEL`) and evict the cache on every process at once. While the
broker is disconnected the cache is bypassed, and it is emptied on reconnection, so
a missed message never leaves a revoked session usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select

from weflux.auth.principal import Principal
from weflux.auth.tokens import InvalidTokenError, TokenClaims, TokenCodec
from weflux.db import Database
from weflux.models import AuthSession, Membership, Organization, Role, User, utcnow
from weflux.realtime.broker import Broker, Message
from weflux.tasks import cancel_and_wait

log = logging.getLogger(__name__)

AUTH_CHANNEL = "weflux:auth"
CACHE_TTL_SECONDS = 30.0
CACHE_MAX_ENTRIES = 10_000
TOUCH_INTERVAL = timedelta(minutes=1)
# Sessions read by one statement (a re-check of every socket: `authenticate_all`).
_LOAD_BATCH = 500
# While the broker is disconnected no revocation from another process can arrive: open
# sockets are re-checked against the database this often instead (revocation within a
# second, Redis or not).
DEAF_RECHECK_SECONDS = 1.0


@dataclass
class _Entry:
    live: bool
    # The workspace the session was looked up in: an entry answers only for tokens
    # naming that workspace (a session id is not a key on its own).
    org_id: uuid.UUID | None = None
    membership_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    role: Role | None = None
    session_expires_at: datetime | None = None
    last_used_at: datetime | None = None
    must_enroll: bool = False
    workspace_deleting: bool = False
    stored_at: float = field(default_factory=time.monotonic)


def _entry(
    auth_session: AuthSession,
    membership: Membership,
    user: User,
    organization: Organization | None,
) -> _Entry:
    require_two_factor = organization is not None and organization.require_two_factor
    return _Entry(
        live=auth_session.revoked_at is None,
        org_id=membership.org_id,
        membership_id=membership.id,
        user_id=membership.user_id,
        role=membership.role,
        session_expires_at=auth_session.expires_at,
        last_used_at=auth_session.last_used_at,
        must_enroll=require_two_factor and user.two_factor_enabled_at is None,
        workspace_deleting=(
            organization is not None and organization.deletion_scheduled_at is not None
        ),
    )


def _principal(claims: TokenClaims, entry: _Entry, now: datetime) -> tuple[Principal | None, bool]:
    """The token's principal if its session is valid now, and whether the session's last
    use should be written (once a minute)."""
    if (
        not entry.live
        or entry.org_id != claims.org_id
        or entry.user_id != claims.user_id
        or entry.session_expires_at is None
        or entry.session_expires_at <= now
        or entry.role is None
        or entry.membership_id is None
    ):
        return None, False
    touch = entry.last_used_at is None or now - entry.last_used_at > TOUCH_INTERVAL
    if touch:
        entry.last_used_at = now
    principal = Principal(
        user_id=claims.user_id,
        org_id=claims.org_id,
        session_id=claims.session_id,
        membership_id=entry.membership_id,
        role=entry.role,
        token_expires_at=claims.expires_at,
        must_enroll=entry.must_enroll,
        workspace_deleting=entry.workspace_deleting,
    )
    return principal, touch


class SessionCache:
    """Session id -> what the database said of it, for a few seconds."""

    def __init__(self, ttl: float = CACHE_TTL_SECONDS, max_entries: int = CACHE_MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()

    def get(self, session_id: uuid.UUID) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if time.monotonic() - entry.stored_at > self.ttl:
            del self._entries[session_id]
            return None
        self._entries.move_to_end(session_id)
        return entry

    def put(self, session_id: uuid.UUID, entry: _Entry) -> None:
        self._entries[session_id] = entry
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def evict_sessions(self, session_ids: Iterable[uuid.UUID]) -> None:
        for session_id in session_ids:
            self._entries.pop(session_id, None)

    def evict_memberships(self, membership_ids: Iterable[uuid.UUID]) -> None:
        targets = set(membership_ids)
        for session_id in [s for s, e in self._entries.items() if e.membership_id in targets]:
            del self._entries[session_id]

    def clear(self) -> None:
        self._entries.clear()


def revocation_message(
    session_ids: Iterable[uuid.UUID], membership_ids: Iterable[uuid.UUID], *, origin: str
) -> Message:
    """What `AUTH_CHANNEL` carries: every process forgets these and closes their sockets."""
    return {
        "sessions": [str(s) for s in session_ids],
        "memberships": [str(m) for m in membership_ids],
        "origin": origin,
    }


RevocationListener = Callable[[set[uuid.UUID], set[uuid.UUID]], Awaitable[None]]


class Authenticator:
    """Turns an access token into a Principal, or None."""

    def __init__(self, codec: TokenCodec, db: Database, broker: Broker) -> None:
        self.codec = codec
        self.db = db
        self.broker = broker
        self.cache = SessionCache()
        self._origin = uuid.uuid4().hex  # this process, to recognise its own broadcasts
        self._listeners: list[RevocationListener] = []
        self._unsubscribe: Callable[[], Awaitable[None]] | None = None
        # Counts the revocation messages seen (and reconnections): a look-up that saw it
        # change meanwhile may have read the database before that revocation committed.
        self.generation = 0
        self._watch: asyncio.Task[None] | None = None
        # The listeners whose last re-check of everyone failed (each its own run: the
        # counts feed, which reads nothing then, succeeds beside a failing registry).
        self._recheck_failing: set[RevocationListener] = set()

    async def start(self) -> None:
        self._unsubscribe = await self.broker.subscribe(AUTH_CHANNEL, self._on_broadcast)
        self.broker.on_reconnect(self._on_reconnect)
        self._watch = asyncio.create_task(self._recheck_while_deaf(), name="weflux-auth-deaf")

    async def stop(self) -> None:
        if self._watch is not None:
            watch, self._watch = self._watch, None
            await cancel_and_wait(watch)
        if self._unsubscribe is not None:
            await self._unsubscribe()

    async def _recheck_while_deaf(self) -> None:
        """While the broker is disconnected, tell the listeners (open sockets) to re-check
        everyone each `DEAF_RECHECK_SECONDS`: a revocation through another process cannot
        reach this one then, and a socket would otherwise stream to a revoked session until
        Redis came back. Requests need none of this: the cache is bypassed meanwhile."""
        while True:
            await asyncio.sleep(DEAF_RECHECK_SECONDS)
            if not self.broker.connected:
                await self._recheck_everyone()

    def add_revocation_listener(self, listener: RevocationListener) -> None:
        """Be told of revoked sessions and changed memberships (open sockets use it)."""
        self._listeners.append(listener)

    async def authenticate(self, token: str | None) -> Principal | None:
        return (await self.authenticate_all((token,)))[token]

    async def authenticate_all(
        self, tokens: Iterable[str | None]
    ) -> dict[str | None, Principal | None]:
        """`authenticate` of each token, reading the database once per workspace for the
        sessions the cache cannot answer (all of them while the broker is away: a
        re-check of every open socket each second is one read per workspace, not one per
        session)."""
        answers: dict[str | None, Principal | None] = {}
        verified: dict[str, TokenClaims] = {}
        for token in tokens:
            answers[token] = None
            if token and token not in verified:
                with contextlib.suppress(InvalidTokenError):
                    verified[token] = self.codec.verify(token, "access")
        entries: dict[str, _Entry] = {}
        unknown: dict[uuid.UUID, list[tuple[str, TokenClaims]]] = {}
        for token, claims in verified.items():
            entry = self._cached(claims)
            if entry is None:
                unknown.setdefault(claims.org_id, []).append((token, claims))
            else:
                entries[token] = entry
        for org_id, of_workspace in unknown.items():
            generation = self.generation
            loaded = await self._load(org_id, {claims.session_id for _, claims in of_workspace})
            for token, claims in of_workspace:
                entry = loaded.get(claims.session_id) or _Entry(live=False, org_id=org_id)
                self._keep(claims, entry, generation)
                entries[token] = entry
        now = utcnow()
        touched: dict[uuid.UUID, list[uuid.UUID]] = {}
        for token, claims in verified.items():
            answers[token], touch = _principal(claims, entries[token], now)
            if touch:
                touched.setdefault(claims.org_id, []).append(claims.session_id)
        for org_id, session_ids in touched.items():
            await self._touch(org_id, session_ids, now)
        return answers

    def _cached(self, claims: TokenClaims) -> _Entry | None:
        """The cache's answer for the token's session (none while the broker is away:
        revocations from other processes cannot reach it then)."""
        entry = self.cache.get(claims.session_id) if self.broker.connected else None
        if entry is not None and entry.org_id != claims.org_id:
            return None  # looked up for another workspace: ask the database for this one
        return entry

    def _keep(self, claims: TokenClaims, entry: _Entry, generation: int) -> None:
        if generation == self.generation:
            # Else a revocation arrived during the read, which may predate its commit:
            # cached, a revoked session would pass for the cache's lifetime.
            self.cache.put(claims.session_id, entry)

    async def _load(
        self, org_id: uuid.UUID, session_ids: set[uuid.UUID]
    ) -> dict[uuid.UUID, _Entry]:
        """What the database says of these sessions of the workspace (a session it does
        not hold is absent)."""
        entries: dict[uuid.UUID, _Entry] = {}
        async with self.db.session(org_id) as session:
            organization: Organization | None = None
            ids = sorted(session_ids)
            for start in range(0, len(ids), _LOAD_BATCH):
                rows = (
                    await session.exec(
                        select(AuthSession, Membership, User)
                        .join(Membership, col(Membership.id) == col(AuthSession.membership_id))
                        .join(User, col(User.id) == col(Membership.user_id))
                        .where(col(AuthSession.id).in_(ids[start : start + _LOAD_BATCH]))
                    )
                ).all()
                if rows and organization is None:
                    organization = await session.get(Organization, org_id)
                for auth_session, membership, user in rows:
                    entries[auth_session.id] = _entry(auth_session, membership, user, organization)
        return entries

    async def _touch(self, org_id: uuid.UUID, session_ids: list[uuid.UUID], now: datetime) -> None:
        async with self.db.session(org_id) as session:
            await session.exec(
                update(AuthSession)
                .where(col(AuthSession.id).in_(session_ids))
                .values(last_used_at=now)
            )

    async def publish_revocation(
        self,
        *,
        session_ids: Iterable[uuid.UUID] = (),
        membership_ids: Iterable[uuid.UUID] = (),
    ) -> None:
        """Tell every process (this one included) to forget these sessions and memberships."""
        message = revocation_message(session_ids, membership_ids, origin=self._origin)
        # Evict here first: this process must not wait for the round trip.
        await self._on_message(message)
        try:
            await self.broker.publish(AUTH_CHANNEL, message)
        except Exception:
            log.exception("could not publish a revocation; other processes rely on cache expiry")

    async def _on_broadcast(self, message: Message) -> None:
        if message.get("origin") != self._origin:  # our own was handled when published
            await self._on_message(message)

    async def _on_message(self, message: Message) -> None:
        self.generation += 1
        try:
            sessions = {uuid.UUID(s) for s in message.get("sessions", [])}
            memberships = {uuid.UUID(m) for m in message.get("memberships", [])}
        except (TypeError, ValueError, AttributeError):
            log.warning("ignored a malformed revocation message")
            return
        self.cache.evict_sessions(sessions)
        self.cache.evict_memberships(memberships)
        for listener in self._listeners:
            try:
                await listener(sessions, memberships)
            except Exception:
                log.exception("revocation listener failed")

    async def _on_reconnect(self) -> None:
        self.generation += 1
        self.cache.clear()
        await self._recheck_everyone()

    async def _recheck_everyone(self) -> None:
        """Messages may have been missed: every listener re-checks all it holds.

        While Redis is away this runs each second; with the database away too every pass
        fails alike: the first failure of a run of them logs its traceback, the others one
        line each, until a pass of that listener succeeds."""
        for listener in self._listeners:
            try:
                await listener(set(), set())
            except Exception as error:
                if listener in self._recheck_failing:
                    log.warning(
                        "re-checking the open sockets failed again: %s", type(error).__name__
                    )
                else:
                    log.exception("revocation listener failed")
                self._recheck_failing.add(listener)
            else:
                self._recheck_failing.discard(listener)
