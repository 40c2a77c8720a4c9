"""Production refuses to serve a database whose schema is not at the latest migration."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from tests.fixtures import REPO_ROOT
from tests.fixtures.app import lifespan
from tests.fixtures.databases import APP_ROLE, DatabaseUrls
from tests.fixtures.live import free_port
from tests.fixtures.settings import PRODUCTION_MAIL, make_settings
from weflux.app import create_app
from weflux.config import Settings, generate_encryption_key_entry
from weflux.db import Database
from weflux.migrate import SchemaOutOfDate, alembic_config, downgrade

STATES = ["un-migrated", "half-migrated"]


def _previous_revision(state: str) -> str:
    if state == "un-migrated":
        return "base"
    script = ScriptDirectory.from_config(alembic_config())
    current = script.get_current_head()
    assert current is not None
    head = script.get_revision(current)
    assert head is not None
    down = head.down_revision
    assert isinstance(down, str)
    return down


def _production(tmp_path: Path, urls: DatabaseUrls, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        env="production",
        database_url=urls.app,
        database_migration_url=urls.owner,
        **(PRODUCTION_MAIL | overrides),
    )


@pytest.mark.parametrize("state", STATES)
async def test_the_app_factory_refuses_a_stale_schema_in_production(
    database_urls: DatabaseUrls, tmp_path: Path, state: str
) -> None:
    """Given a database behind the latest migration (none applied, or all but the last),
    when the app (`uvicorn --factory weflux.app:create_app`) starts in production,
    then it refuses, naming `weflux migrate`."""
    await downgrade(database_urls.owner, _previous_revision(state))
    application = create_app(_production(tmp_path, database_urls))
    with pytest.raises(SchemaOutOfDate, match="run `weflux migrate`"):
        async with lifespan(application):
            pass


async def test_production_starts_on_the_latest_schema(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    application = create_app(_production(tmp_path, database_urls))
    async with lifespan(application):
        pass


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_outside_production_a_stale_schema_is_a_warning(
    database_urls: DatabaseUrls, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a half-migrated database, when the app starts in the test environment,
    then it starts, and warns naming `weflux migrate`."""
    await downgrade(database_urls.owner, _previous_revision("half-migrated"))
    settings = make_settings(tmp_path, database_url=database_urls.app)
    with caplog.at_level(logging.WARNING):
        async with lifespan(create_app(settings)):
            pass
    assert "weflux migrate" in caplog.text


@pytest.mark.parametrize("state", STATES)
async def test_weflux_serve_refuses_a_stale_schema_in_production(
    database_urls: DatabaseUrls, tmp_path: Path, state: str
) -> None:
    """Given a database behind the latest migration,
    when `weflux serve` starts in production, then it exits at once with an error
    naming `weflux migrate`, before serving anything."""
    await downgrade(database_urls.owner, _previous_revision(state))
    env = {
        "PATH": "/usr/bin:/bin",
        # This checkout's code and migrations, not those of the installed package.
        "PYTHONPATH": str(REPO_ROOT),
        "WEFLUX_ENV": "production",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_JWT_SECRET": "x" * 40,
        "WEFLUX_ENCRYPTION_KEYS": generate_encryption_key_entry("p1"),
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        **{f"WEFLUX_{name.upper()}": value for name, value in PRODUCTION_MAIL.items()},
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "weflux",
        "serve",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert b"run `weflux migrate`" in stderr
    assert b"Uvicorn running" not in stderr


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_an_app_role_that_cannot_read_the_revision_is_told_to_migrate(
    database_urls: DatabaseUrls, owner_db: Database, tmp_path: Path
) -> None:
    """Given a database migrated by a release that did not let the app's role read
    `alembic_version`, when the app starts in production, then it refuses, naming
    `weflux migrate` (which grants that read), instead of failing on a permission error."""
    async with owner_db.engine.begin() as connection:
        await connection.execute(text(f"REVOKE SELECT ON alembic_version FROM {APP_ROLE}"))  # noqa: S608
    application = create_app(_production(tmp_path, database_urls))
    with pytest.raises(SchemaOutOfDate, match="run `weflux migrate`"):
        async with lifespan(application):
            pass
