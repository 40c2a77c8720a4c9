"""Live sockets by session, so that revocation closes them at once (4401).

Revocations, removals and role changes travel on the broker to every process (see
`weflux.auth.authenticator`). Here a revoked session's sockets are closed; a member whose
role changed is re-authenticated and their sockets see with the new role from the next
event on (or are closed when nothing valid is left); when the broker reconnects, every
socket is re-checked because messages may have been missed; and each socket is closed
when its access token expires.

Expiry takes one timer per process, not one per socket: a heap holds each session's
earliest expiry (a session's sockets may carry different access tokens of it), the timer
is set for the heap's first, and when it fires the session's expired sockets are closed
and its next expiry goes back on the heap.

The registry also caps the sockets one session and one member (a user in a workspace,
across their sessions) may hold in this process: past either, `register` refuses the
socket (`TooManySockets`; the socket closes 4403, see `weflux.gql.socket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import uuid
from typing import Protocol

from weflux.auth.authenticator import Authenticator
from weflux.auth.principal import Principal
from weflux.auth.tokens import bearer_token
from weflux.models import utcnow
from weflux.realtime.caps import TooManySockets

log = logging.getLogger(__name__)

REVOKED_CLOSE = 4401
# A timer may fire up to the loop's clock resolution early; a token this close to its
# expiry when its session's timer fires is closed then rather than on another timer.
EXPIRY_TOLERANCE = 0.001  # seconds
# Reads of a re-check pass when changes keep arriving during them (each change's own pass
# applies it too; past this many the pass applies its last read).
_RECHECK_READS = 3


class LiveSocket(Protocol):
    """What the registry needs of an authenticated socket (its GraphQL context)."""

    principal: Principal | None
    connection_params: dict[str, object] | None

    @property
    def actor(self) -> Principal: ...

    async def close_socket(self, code: int, reason: str) -> None: ...


def _token(context: LiveSocket) -> str | None:
    params = context.connection_params or {}
    header = params.get("authorization") or params.get("Authorization")
    return bearer_token(header if isinstance(header, str) else None)


def _expires_in(context: LiveSocket) -> float:
    """Seconds until the socket's access token expires (negative once it has)."""
    return (context.actor.token_expires_at - utcnow()).total_seconds()


class SocketRegistry:
    """The authenticated WebSockets of this process, by session."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        per_session: int | None = None,
        per_member: int | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.per_session = per_session
        self.per_member = per_member
        self._sockets: dict[uuid.UUID, set[LiveSocket]] = {}
        self._members: dict[uuid.UUID, int] = {}  # sockets by membership
        # Each session's membership as registered (a re-check replaces the principal).
        self._member_of: dict[uuid.UUID, uuid.UUID] = {}
        self._count = 0
        # When each session's earliest socket expires (loop time), and the same as a heap
        # of (time, session); a heap entry that `_due` no longer holds is stale.
        self._due: dict[uuid.UUID, float] = {}
        self._heap: list[tuple[float, uuid.UUID]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        authenticator.add_revocation_listener(self.on_revocation)

    def __len__(self) -> int:
        return self._count

    def sockets_of_session(self, session_id: uuid.UUID) -> int:
        return len(self._sockets.get(session_id, ()))

    def sockets_of_member(self, membership_id: uuid.UUID) -> int:
        return self._members.get(membership_id, 0)

    def register(self, context: LiveSocket) -> None:
        """Hold the socket (`TooManySockets` past the session's or the member's cap)."""
        actor = context.actor
        session_id, membership_id = actor.session_id, actor.membership_id
        group = self._sockets.get(session_id)
        if group is not None:
            if context in group:
                return
            # one membership per session: counted under the one its first socket had
            membership_id = self._member_of[session_id]
        if self.per_session is not None and group is not None and len(group) >= self.per_session:
            raise TooManySockets("Too many open sockets for this session")
        members = self._members.get(membership_id, 0)
        if self.per_member is not None and members >= self.per_member:
            raise TooManySockets("Too many open sockets for this member")
        if group is None:
            group = self._sockets[session_id] = set()
            self._member_of[session_id] = membership_id
        group.add(context)
        self._members[membership_id] = members + 1
        self._count += 1
        loop = asyncio.get_running_loop()
        self._expire_at(session_id, loop.time() + max(_expires_in(context), 0.0))
        self._arm(loop)

    def unregister(self, context: LiveSocket) -> None:
        principal = context.principal
        if principal is None:
            return
        group = self._sockets.get(principal.session_id)
        if group is None or context not in group:
            return
        group.discard(context)
        self._count -= 1
        membership_id = self._member_of[principal.session_id]
        left = self._members[membership_id] - 1
        if left:
            self._members[membership_id] = left
        else:
            del self._members[membership_id]
        if group:
            return
        del self._sockets[principal.session_id]
        del self._member_of[principal.session_id]
        self._due.pop(principal.session_id, None)
        if not self._due:
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif len(self._heap) > 2 * len(self._due) + 64:  # mostly stale entries: rebuild
            self._heap = [(when, session_id) for session_id, when in self._due.items()]
            heapq.heapify(self._heap)

    def _expire_at(self, session_id: uuid.UUID, when: float) -> None:
        """Close the session's expired sockets at `when` (loop time), unless due earlier."""
        due = self._due.get(session_id)
        if due is None or when < due:
            self._due[session_id] = when
            heapq.heappush(self._heap, (when, session_id))

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the timer for the earliest live entry, unless it is set for that already."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale
        if not heap or (self._timer is not None and self._timer.when() <= heap[0][0]):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(heap[0][0], self._expire)

    def _expire(self) -> None:
        """The timer: close every socket whose token expired, then set it for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        heap = self._heap
        later: list[tuple[uuid.UUID, float]] = []
        while heap and heap[0][0] <= loop.time() + EXPIRY_TOLERANCE:
            when, session_id = heapq.heappop(heap)
            if self._due.get(session_id) != when:
                continue  # stale: the session ended, or is due at another time
            del self._due[session_id]
            left = []
            for context in self._sockets.get(session_id, ()):
                seconds = _expires_in(context)
                if seconds <= EXPIRY_TOLERANCE:
                    task = asyncio.ensure_future(self.close(context, "Token expired"))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
                else:
                    left.append(seconds)
            if left:  # sockets of the session on later tokens
                later.append((session_id, loop.time() + min(left)))
        for session_id, when in later:
            self._expire_at(session_id, when)
        self._arm(loop)

    async def close(self, context: LiveSocket, reason: str) -> None:
        self.unregister(context)
        with contextlib.suppress(Exception):  # already closed
            await context.close_socket(REVOKED_CLOSE, reason)

    async def on_revocation(self, sessions: set[uuid.UUID], memberships: set[uuid.UUID]) -> None:
        """Close revoked sessions' sockets; re-check changed members (or everyone)."""
        for session_id in sessions:
            for context in list(self._sockets.get(session_id, ())):
                await self.close(context, "Session revoked")
        recheck_all = not sessions and not memberships
        rechecked = [
            context
            for group in list(self._sockets.values())
            for context in group
            if context.principal is not None
            and (recheck_all or context.principal.membership_id in memberships)
        ]
        if not rechecked:
            return
        # One look-up per access token, however many sockets (tabs) carry it, and one
        # read per workspace: a re-check of everyone runs each second while the broker
        # is away. A change told during the read (its own pass applies it) may postdate
        # what was read: read again, lest the older answer overwrite the newer.
        for _ in range(_RECHECK_READS):
            generation = self.authenticator.generation
            looked_up = await self.authenticator.authenticate_all(_token(c) for c in rechecked)
            if generation == self.authenticator.generation:
                break
        for context in rechecked:
            await self.recheck(context, looked_up)

    async def recheck(
        self, context: LiveSocket, looked_up: dict[str | None, Principal | None] | None = None
    ) -> bool:
        """Authenticate the socket again: closed (False) unless its session is still live.
        `looked_up`: the principals of the tokens authenticated for this pass."""
        token = _token(context)
        if looked_up is not None and token in looked_up:
            fresh = looked_up[token]
        else:
            fresh = await self.authenticator.authenticate(token)
        if fresh is None:
            await self.close(context, "Session revoked")
            return False
        if fresh.must_enroll:
            # The workspace now requires two factors: its live operations end too.
            await self.close(context, "Two-factor authentication required")
            return False
        context.principal = fresh  # later events are loaded with the current role
        return True
