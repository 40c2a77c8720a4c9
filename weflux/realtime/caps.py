"""How many WebSockets one process holds per client IP, in all and before `connection_init`.

Memory is per process: each idle subscribed socket holds tens of KiB, so a stolen token, a
reconnect loop or peers that never authenticate could otherwise hold a process's memory
with thousands of sockets. A handshake past a cap of its client IP (the trusted-proxy-aware
address of `weflux.client_ip`) is refused before it is accepted (HTTP 429, in
`weflux.gql.view`); the per-session and per-member caps are checked where a socket
authenticates (`weflux.realtime.sockets.SocketRegistry.register`, closed 4403). Each socket
holds one `Admission` from its handshake to its end, whatever ends it.
"""

from __future__ import annotations

from starlette.types import Scope

ADMISSION = "weflux.socket_admission"  # the scope key of a socket's `Admission`
# A cap at `connection_init` closes as any failed `connection_init` does (4403, the reason
# says which cap). Not 4429: graphql-transport-ws reserves it for a second
# `connection_init`, which graphql-ws's client treats as fatal, never retrying.
TOO_MANY_SOCKETS_CLOSE = 4403


class TooManySockets(Exception):
    """A new socket would pass one of the caps; the message says which (no identifier)."""


class SocketCaps:
    """The open sockets of this process by client IP, and those not yet past init."""

    def __init__(self, *, per_ip: int, pending_per_ip: int) -> None:
        self.per_ip = per_ip
        self.pending_per_ip = pending_per_ip
        self._open: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    def admit(self, ip: str) -> Admission:
        """Count a new socket from `ip` (`TooManySockets` past a cap, counting nothing)."""
        if self._open.get(ip, 0) >= self.per_ip:
            raise TooManySockets("Too many open sockets from this address")
        if self._pending.get(ip, 0) >= self.pending_per_ip:
            raise TooManySockets("Too many sockets waiting for connection_init from this address")
        self._open[ip] = self._open.get(ip, 0) + 1
        self._pending[ip] = self._pending.get(ip, 0) + 1
        return Admission(self, ip)

    def open_from(self, ip: str) -> int:
        """The sockets from `ip` this process holds."""
        return self._open.get(ip, 0)

    def pending_from(self, ip: str) -> int:
        """The sockets from `ip` that have not sent `connection_init` yet."""
        return self._pending.get(ip, 0)

    def __len__(self) -> int:
        return sum(self._open.values())

    def _drop(self, counts: dict[str, int], ip: str) -> None:
        left = counts[ip] - 1
        if left:
            counts[ip] = left
        else:
            del counts[ip]  # an address with no socket keeps no entry


class Admission:
    """One socket's place in the counts of its IP; each release counts once."""

    __slots__ = ("_caps", "ip", "open", "pending")

    def __init__(self, caps: SocketCaps, ip: str) -> None:
        self._caps = caps
        self.ip = ip
        self.open = True
        self.pending = True

    def initialised(self) -> None:
        """The socket sent `connection_init`: it is no longer pending."""
        if self.pending:
            self.pending = False
            self._caps._drop(self._caps._pending, self.ip)

    def release(self) -> None:
        """The socket ended."""
        self.initialised()
        if self.open:
            self.open = False
            self._caps._drop(self._caps._open, self.ip)


def admission_of(scope: Scope) -> Admission | None:
    """The admission of the socket a scope serves (None for HTTP)."""
    admission = scope.get(ADMISSION)
    return admission if isinstance(admission, Admission) else None
