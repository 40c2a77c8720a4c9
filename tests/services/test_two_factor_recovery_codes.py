"""Recovery codes consumed by the service: each once, also when two uses race."""

from __future__ import annotations

import asyncio
import os

from tests.fixtures.factories import Actor
from weflux.auth import recovery_codes, totp
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import User
from weflux.services.two_factor import _consume_recovery_code

RING = KeyRing([("k1", os.urandom(32))])


async def test_two_uses_of_one_code_at_once_exactly_one_wins(db: Database, agent: Actor) -> None:
    """Given a user's codes read by two requests before either uses one (both see it
    unused), when both use the same code at once, then exactly one succeeds (the
    conditional UPDATE), and that code alone is gone."""
    codes = totp.new_recovery_codes()
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
        assert user is not None
        user.recovery_code_hashes = recovery_codes.stored_form(RING, user.id, codes)
    seen = []
    for _ in range(2):
        async with db.session(agent.org_id) as session:
            seen.append(await session.get(User, agent.user.id))

    async def use(user: User | None) -> bool:
        assert user is not None
        async with db.session(agent.org_id) as session:
            return await _consume_recovery_code(session, RING, user, codes[0])

    results = await asyncio.gather(use(seen[0]), use(seen[1]))

    assert sorted(results) == [False, True]
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id, populate_existing=True)
        assert user is not None
        stored = user.recovery_code_hashes or ""
    assert len(stored.split()) == 9
    assert recovery_codes.matching(RING, agent.user.id, stored, codes[0]) is None
    assert recovery_codes.matching(RING, agent.user.id, stored, codes[1]) is not None
