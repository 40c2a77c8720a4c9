"""The test suite's hooks and the fixtures every test may use.

Shared fixtures and helpers live in `tests/fixtures/` (registered below, never imported
from another test module); `tests/README.md` says where each test belongs.
"""

from __future__ import annotations

import os

import pytest

# The helpers' asserts explain themselves too (before any of them is imported).
pytest.register_assert_rewrite("tests.fixtures")

from weflux.auth import passwords  # noqa: E402  (after the rewrite hook, on purpose)

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.databases",
    "tests.fixtures.settings",
    "tests.fixtures.app",
    "tests.fixtures.principals",
    "tests.fixtures.limiter",
    "tests.fixtures.meta",
    "tests.fixtures.channels",
    "tests.fixtures.inbox",
    "tests.fixtures.outbound",
    "tests.fixtures.live",
    "tests.fixtures.inbound",
    "tests.fixtures.processes",
    "tests.fixtures.brokers",
    "tests.fixtures.media",
]

# Fixtures (and parameter values) that need a server: a test that uses one is marked, so
# that `make test-fast` (-m "not postgres and not redis") runs on SQLite and in process only.
REDIS_FIXTURES = {"require_redis", "redis_client"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if params.get("dialect") == "postgresql":
            item.add_marker(pytest.mark.postgres)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & REDIS_FIXTURES or "redis" in params.values():
            item.add_marker(pytest.mark.redis)


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own WEFLUX_* settings never leak into a test."""
    for name in list(os.environ):
        if name.startswith("WEFLUX_") and not name.startswith("WEFLUX_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _fast_bcrypt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt at cost 4 in tests (production is 12; a dedicated test checks that)."""
    if "real_bcrypt_cost" not in request.fixturenames:
        monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 4)
