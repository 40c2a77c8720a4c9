"""Shared fixtures: dialects, databases, the app and its client, named workspaces and people."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from tests.fixtures.databases import (
    DatabaseUrls,
    PostgresTemplate,
    SqliteTemplate,
    run_blocking,
)
from tests.fixtures.factories import Actor, create_actor, create_org
from tests.fixtures.limiter import (  # noqa: F401  (shared fixtures)
    backend,
    key_prefix,
    make_limiter,
    redis_client,
)
from tests.fixtures.meta import fake_meta, meta_url  # noqa: F401  (shared fixtures)
from tests.fixtures.services import postgres_problem, redis_problem, require
from weflux.api.ratelimit import LIMIT_NAMES
from weflux.auth import passwords
from weflux.config import Settings, generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.models import Organization, Role

DIALECTS = ["sqlite", "postgresql"]
GENEROUS_LIMITS = LIMIT_NAMES

postgres_only = pytest.mark.parametrize("dialect", ["postgresql"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("dialect") == "postgresql":
            item.add_marker(pytest.mark.postgres)


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


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """Run the test on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    template = SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))
    template.build()
    return template


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate]:
    require(postgres_problem(), "WEFLUX_TEST_DATABASE_URL")
    template = PostgresTemplate()
    run_blocking(template.build())
    yield template
    template.destroy()


@pytest.fixture
def require_redis() -> None:
    require(redis_problem(), "WEFLUX_TEST_REDIS_URL")


@pytest.fixture
async def database_urls(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[DatabaseUrls]:
    """A fresh, migrated database of the test's dialect."""
    if dialect == "sqlite":
        yield request.getfixturevalue("sqlite_template").clone(tmp_path)
        return
    template: PostgresTemplate = request.getfixturevalue("postgres_template")
    urls = await template.clone()
    yield urls
    await template.drop(urls)


@pytest.fixture
async def db(database_urls: DatabaseUrls) -> AsyncIterator[Database]:
    """The app's database handle (on PostgreSQL: the restricted role)."""
    database = Database(database_urls.app)
    yield database
    await database.dispose()


@pytest.fixture
async def owner_db(database_urls: DatabaseUrls) -> AsyncIterator[Database]:
    """The schema owner's maintenance handle, for inspecting what the app cannot see."""
    database = Database(database_urls.owner, maintenance=True)
    yield database
    await database.dispose()


# What production needs beyond secrets: the platform's mail server and the app's URL.
PRODUCTION_MAIL = {
    "smtp_url": "smtps://mailer:secret@smtp.example.com",
    "smtp_from": "no-reply@example.com",
    "app_url": "https://app.example",
}


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "env": "test",
        "var_dir": tmp_path / "var",
        "jwt_secret": "test-jwt-secret-" + "x" * 32,
        "encryption_keys": generate_encryption_key_entry("test1"),
        "log_format": "console",
        "in_process_worker": False,
        # Generous limits: counters in Redis outlive a test run; rate-limit tests set their own.
        **{f"rate_limit_{name}": "10000/minute" for name in GENEROUS_LIMITS},
        # Nothing in the tests may reach the real Graph API: a closed local port by default.
        "meta_graph_url": "http://127.0.0.1:9",
    }
    return load_settings(**(values | overrides))


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path, database_url=database_urls.app, database_migration_url=database_urls.owner
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    from weflux.app import create_app

    application = create_app(settings)
    async with LifespanManager(application):
        # The app itself (its `state` holds the runtime); it needs no lifespan state in scope.
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def org(db: Database) -> Organization:
    async with db.session() as session:
        return await create_org(session, name="Acme")


@pytest.fixture
async def other_org(db: Database) -> Organization:
    async with db.session() as session:
        return await create_org(session, name="Globex")


async def _actor(db: Database, org: Organization, role: Role, email: str) -> Actor:
    async with db.session(org.id) as session:
        return await create_actor(session, role, email=email)


@pytest.fixture
async def admin(db: Database, org: Organization) -> Actor:
    return await _actor(db, org, Role.ADMIN, "admin@acme.example")


@pytest.fixture
async def manager(db: Database, org: Organization) -> Actor:
    return await _actor(db, org, Role.MANAGER, "manager@acme.example")


@pytest.fixture
async def agent(db: Database, org: Organization) -> Actor:
    return await _actor(db, org, Role.AGENT, "agent@acme.example")


@pytest.fixture
async def other_admin(db: Database, other_org: Organization) -> Actor:
    return await _actor(db, other_org, Role.ADMIN, "admin@globex.example")
