"""Live sockets by session, so that revocation closes them at once (4401).

Revocations, removals and role changes travel on the broker to every process (see
`weflux.auth.authenticator`). Here a revoked session's sockets are closed; a member whose
role changed is re-authenticated and their sockets see with the new role from the next
event on (or are closed when nothing valid is left); when the broker reconnects, every
socket is re-checked because messages may have been missed; and each socket is closed
when its access token expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

from weflux.auth.authenticator import Authenticator
from weflux.auth.principal import Principal
from weflux.auth.tokens import bearer_token
from weflux.models import utcnow

log = logging.getLogger(__name__)

REVOKED_CLOSE = 4401


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


class SocketRegistry:
    """The authenticated WebSockets of this process, by session."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._sockets: dict[uuid.UUID, set[LiveSocket]] = {}
        self._expiry: dict[int, asyncio.TimerHandle] = {}
        authenticator.add_revocation_listener(self.on_revocation)

    def __len__(self) -> int:
        return sum(len(group) for group in self._sockets.values())

    def register(self, context: LiveSocket) -> None:
        principal = context.actor
        self._sockets.setdefault(principal.session_id, set()).add(context)
        delay = (principal.token_expires_at - utcnow()).total_seconds()
        loop = asyncio.get_running_loop()
        self._expiry[id(context)] = loop.call_later(
            max(delay, 0.0), lambda: asyncio.ensure_future(self.close(context, "Token expired"))
        )

    def unregister(self, context: LiveSocket) -> None:
        timer = self._expiry.pop(id(context), None)
        if timer is not None:
            timer.cancel()
        principal = context.principal
        if principal is None:
            return
        group = self._sockets.get(principal.session_id)
        if group is not None:
            group.discard(context)
            if not group:
                del self._sockets[principal.session_id]

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
        for group in list(self._sockets.values()):
            for context in list(group):
                principal = context.principal
                if principal is None:
                    continue
                if recheck_all or principal.membership_id in memberships:
                    await self._recheck(context)

    async def _recheck(self, context: LiveSocket) -> None:
        fresh = await self.authenticator.authenticate(_token(context))
        if fresh is None:
            await self.close(context, "Session revoked")
            return
        if fresh.must_enroll:
            # The workspace now requires two factors: its live operations end too.
            await self.close(context, "Two-factor authentication required")
            return
        context.principal = fresh  # later events are loaded with the current role
