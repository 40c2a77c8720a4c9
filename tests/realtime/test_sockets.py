"""The socket registry closes each socket when its access token expires, on one timer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from weflux.auth.authenticator import Authenticator
from weflux.auth.principal import Principal
from weflux.auth.tokens import TokenCodec
from weflux.db import Database
from weflux.models import Role, utcnow
from weflux.realtime.broker import InProcessBroker
from weflux.realtime.caps import TooManySockets
from weflux.realtime.sockets import REVOKED_CLOSE, SocketRegistry

pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])  # no storage involved

LATE = 0.25  # seconds a close may come after its expiry on a loaded machine


@dataclass(eq=False)
class Socket:
    """An authenticated socket as the registry sees it; records when it was closed."""

    principal: Principal | None
    connection_params: dict[str, object] | None = None
    closed: list[tuple[int, str, float]] = field(default_factory=list)

    @property
    def actor(self) -> Principal:
        assert self.principal is not None
        return self.principal

    async def close_socket(self, code: int, reason: str) -> None:
        self.closed.append((code, reason, asyncio.get_running_loop().time()))


def _socket(session_id: uuid.UUID, expires_in: float) -> Socket:
    principal = Principal(
        user_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        session_id=session_id,
        membership_id=uuid.uuid4(),
        role=Role.AGENT,
        token_expires_at=utcnow() + timedelta(seconds=expires_in),
    )
    return Socket(principal)


@pytest.fixture
def registry(db: Database) -> SocketRegistry:
    codec = TokenCodec("s" * 40, access_ttl=timedelta(days=7), refresh_ttl=timedelta(days=30))
    return SocketRegistry(Authenticator(codec, db, InProcessBroker()))


async def test_each_socket_closes_when_its_token_expires(registry: SocketRegistry) -> None:
    # Given two sessions, one with sockets on two of its access tokens, and a socket
    # that closes on its own before its token expires
    loop = asyncio.get_running_loop()
    first, second = uuid.uuid4(), uuid.uuid4()
    expiries = {"a-early": 0.3, "b": 0.5, "a-late": 0.7}
    sockets = {
        "a-early": _socket(first, 0.3),
        "b": _socket(second, 0.5),
        "a-late": _socket(first, 0.7),
        "gone": _socket(second, 0.4),
    }
    started = loop.time()
    for socket in sockets.values():
        registry.register(socket)
    registry.unregister(sockets["gone"])
    # When their tokens expire
    await asyncio.sleep(0.7 + LATE + 0.1)
    # Then each was closed 4401 once, at its own expiry (not before, and not much after)
    for name, expires_in in expiries.items():
        [(code, reason, at)] = sockets[name].closed
        assert (code, reason) == (REVOKED_CLOSE, "Token expired")
        assert expires_in - 0.01 <= at - started <= expires_in + LATE, name
    assert sockets["gone"].closed == []
    assert len(registry) == 0


async def test_closed_sockets_leave_no_expiry_behind(registry: SocketRegistry) -> None:
    # Given a long-lived socket, and many short connections of other sessions that come
    # and go while their tokens are valid for days
    keeper = _socket(uuid.uuid4(), 7 * 86400)
    registry.register(keeper)
    for _ in range(1000):
        socket = _socket(uuid.uuid4(), 7 * 86400)
        registry.register(socket)
        registry.unregister(socket)
    # Then the registry holds the one session's expiry and a bounded number of stale ones
    assert len(registry) == 1
    assert len(registry._due) == 1
    assert len(registry._heap) <= 2 * 1 + 64 + 1
    # And with the last socket gone, nothing at all: no entry, no timer
    registry.unregister(keeper)
    assert (registry._due, registry._heap, registry._timer) == ({}, [], None)


async def test_a_token_already_expired_closes_its_socket_at_once(
    registry: SocketRegistry,
) -> None:
    socket = _socket(uuid.uuid4(), -1)
    registry.register(socket)
    await asyncio.sleep(0.05)
    assert [(code, reason) for code, reason, _ in socket.closed] == [
        (REVOKED_CLOSE, "Token expired")
    ]


def _member_socket(session_id: uuid.UUID, membership_id: uuid.UUID) -> Socket:
    socket = _socket(session_id, 7 * 86400)
    assert socket.principal is not None
    socket.principal = replace(socket.principal, membership_id=membership_id)
    return socket


async def test_a_session_and_a_member_past_their_caps_are_refused(db: Database) -> None:
    # Given a registry capping 2 sockets a session and 3 a member, and a member with 2
    # sockets on one session and 1 on another
    codec = TokenCodec("s" * 40, access_ttl=timedelta(days=7), refresh_ttl=timedelta(days=30))
    registry = SocketRegistry(
        Authenticator(codec, db, InProcessBroker()), per_session=2, per_member=3
    )
    member, one, two = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    held = [_member_socket(one, member), _member_socket(one, member), _member_socket(two, member)]
    for socket in held:
        registry.register(socket)
    registry.register(held[0])  # registered once, counted once
    # When a third opens on the first session, or a fourth on the second, then each is
    # refused, counting nothing
    with pytest.raises(TooManySockets, match="for this session"):
        registry.register(_member_socket(one, member))
    with pytest.raises(TooManySockets, match="for this member"):
        registry.register(_member_socket(two, member))
    assert (len(registry), registry.sockets_of_member(member)) == (3, 3)
    # And another member is not refused
    registry.register(_member_socket(uuid.uuid4(), uuid.uuid4()))
    # When the first session is revoked, then its place is given back at once
    await registry.on_revocation({one}, set())
    assert [code for socket in held[:2] for code, _, _ in socket.closed] == [REVOKED_CLOSE] * 2
    assert (registry.sockets_of_session(one), registry.sockets_of_member(member)) == (0, 1)
    registry.register(_member_socket(two, member))
    # And once every socket ends, nothing of them stays
    for live in list(registry._sockets[two]):
        registry.unregister(live)
    assert registry.sockets_of_member(member) == 0
    assert member not in registry._members
    assert two not in registry._member_of


async def test_a_recheck_of_everyone_looks_each_token_up_once(
    registry: SocketRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given three sockets, two of them (two tabs) carrying one access token, when every
    socket is re-checked (a reconnection; each second while the broker is away), then the
    tokens are authenticated together, each once, and each socket gets its answer (here:
    all revoked)."""
    looked_up: list[str | None] = []

    async def revoked(tokens: Iterable[str | None]) -> dict[str | None, Principal | None]:
        looked_up.extend(set(tokens))
        return dict.fromkeys(looked_up)

    monkeypatch.setattr(registry.authenticator, "authenticate_all", revoked)
    session = uuid.uuid4()
    sockets = [_socket(session, 3600) for _ in range(3)]
    for socket, token in zip(sockets, ["a", "a", "b"], strict=True):
        socket.connection_params = {"authorization": f"Bearer {token}"}
        registry.register(socket)

    await registry.on_revocation(set(), set())

    assert sorted(looked_up, key=str) == ["a", "b"]
    assert [[code for code, _, _ in socket.closed] for socket in sockets] == [[REVOKED_CLOSE]] * 3
