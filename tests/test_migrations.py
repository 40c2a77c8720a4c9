"""Migrations: every revision upgrades and downgrades cleanly, and matches the models."""

from __future__ import annotations

import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel, select

from tests.fixtures.databases import DatabaseUrls, owner_sql, postgres_only
from tests.fixtures.deaths import suspect_and_queued
from tests.fixtures.factories import create_user
from weflux.db import Database
from weflux.emails import normalize_email
from weflux.migrate import alembic_config, downgrade, migrate, migrations_dir
from weflux.models import Organization, User, utcnow


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_every_migration_downgrades_and_upgrades_again(
    database_urls: DatabaseUrls,
) -> None:
    owner = Database(database_urls.owner)
    try:
        async with owner.engine.connect() as conn:
            full = await conn.run_sync(_tables)
        assert {"organizations", "users", "memberships", "sessions", "audit_events"} <= full

        revisions = _revisions()
        for previous in reversed(["base", *revisions[:-1]]):
            await downgrade(database_urls.owner, previous)
        async with owner.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()

        for revision in revisions:
            await migrate(database_urls.owner, app_url=database_urls.app, revision=revision)
        async with owner.engine.connect() as conn:
            assert await conn.run_sync(_tables) == full
    finally:
        await owner.dispose()


def _diff(connection: Connection) -> list[object]:
    dialect = connection.dialect.name

    def on_this_engine(
        item: object, _name: object, type_: str, reflected: bool, *_: object
    ) -> bool:
        """A model's index created on one engine only (`Index.ddl_if(dialect=…)`, the
        inbox list's order: weflux.models.inbox) is compared on that engine alone."""
        ddl_if = getattr(item, "_ddl_if", None)
        return reflected or type_ != "index" or ddl_if is None or ddl_if.dialect in (None, dialect)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": on_this_engine}
    )
    return list(compare_metadata(context, SQLModel.metadata))


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_migrated_schema_matches_the_models(database_urls: DatabaseUrls) -> None:
    owner = Database(database_urls.owner)
    try:
        async with owner.engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await owner.dispose()
    assert diff == []


def test_migration_files_are_date_prefixed() -> None:

    names = [p.name for p in (migrations_dir() / "versions").glob("*.py")]
    assert names
    for name in names:
        assert re.match(r"^\d{4}-\d{2}-\d{2}-\d{4}_[a-z0-9_]+\.py$", name), name


def test_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1


async def test_migrate_creates_the_directory_of_a_new_sqlite_file(tmp_path: Path) -> None:
    """Given a SQLite URL in a directory that does not exist yet (a fresh WEFLUX_VAR_DIR),
    when migrations run, then the directory and the database are created."""
    path = tmp_path / "fresh" / "state" / "weflux.db"
    await migrate(f"sqlite+aiosqlite:///{path}")
    assert path.is_file()


async def test_a_new_sqlite_file_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    """Given no database yet, when migrations and the app's engine create it, then it is
    mode 0600, as its write-ahead log: it holds every message and contact in clear (under
    a umask of 022 SQLite makes them 0644). An existing file keeps its mode."""
    path = tmp_path / "weflux.db"
    await migrate(f"sqlite+aiosqlite:///{path}")
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        async with database.session() as session:
            await session.exec(select(User))
            assert stat.S_IMODE((tmp_path / "weflux.db-wal").stat().st_mode) == 0o600
    finally:
        await database.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = tmp_path / "kept.db"
    kept.touch(mode=0o640)
    await migrate(f"sqlite+aiosqlite:///{kept}")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


async def test_stored_emails_are_rewritten_to_one_form_per_mailbox(
    database_urls: DatabaseUrls,
) -> None:
    """Given accounts stored before 0029 under spellings of a mailbox that are not its
    normal form (a Unicode domain, a decomposed accent), when 0029 runs, then each is in
    the form a login looks up; an account whose normal form is taken by another stays."""
    await downgrade(database_urls.owner, "0028_stored_object_intents")
    owner = Database(database_urls.owner, maintenance=True)
    spellings = {
        "ann@bücher.de": "ann@xn--bcher-kva.de",
        "rene\u0301@example.com": "ren\u00e9@example.com",
        "bob@example.com": "bob@example.com",
        "cy@xn--bcher-kva.de": "cy@xn--bcher-kva.de",
        "cy@bücher.de": "cy@bücher.de",  # its normal form is the account above: kept
    }
    try:
        async with owner.session(all_workspaces="test: accounts") as session:
            users = {email: await create_user(session, email=email) for email in spellings}

        await migrate(database_urls.owner, app_url=database_urls.app)

        async with owner.session(all_workspaces="test: accounts") as session:
            stored = {
                u.id: u.email
                for u in (
                    await session.exec(select(User).execution_options(populate_existing=True))
                ).all()
            }
    finally:
        await owner.dispose()
    assert {email: stored[users[email].id] for email in spellings} == spellings
    assert normalize_email("ANN@BÜCHER.DE") == "ann@xn--bcher-kva.de"
    assert normalize_email("Rene\u0301@Example.com") == "ren\u00e9@example.com"


@postgres_only
async def test_the_claims_before_0038_still_answer_beside_its_own(
    database_urls: DatabaseUrls, db: Database, org: Organization
) -> None:
    """Given a message whose lease ran out (a suspect) and a queued one, each in a
    conversation of its own,
    when 0038 has run, then the previous release's claim (two arguments) still answers
    both, for servers not yet upgraded, and 0038's tells them apart; downgraded to 0037,
    only the previous one is left."""
    now = utcnow()
    due = now - timedelta(seconds=1)
    suspect, queued = await suspect_and_queued(db, org.id, due)
    calls = {
        "before": "SELECT org_id, message_id FROM weflux_due_outbound_messages(:now, 10)",
        "fresh": "SELECT * FROM weflux_due_outbound_messages(:now, 10, false)",
        "suspects": "SELECT * FROM weflux_due_outbound_messages(:now, 10, true)",
    }

    async def answers() -> dict[str, set[tuple[Any, ...]]]:
        found = {}
        for name, call in calls.items():
            try:
                found[name] = {tuple(row) for row in await owner_sql(database_urls, call, now=now)}
            except sa_exc.ProgrammingError:  # no such function
                continue
        return found

    assert await answers() == {
        "before": {(org.id, suspect.id), (org.id, queued.id)},
        "fresh": {(org.id, queued.id, False), (org.id, suspect.id, True)},  # and the hint
        "suspects": {(org.id, suspect.id, True)},
    }
    await downgrade(database_urls.owner, "0037_keyed_recovery_hashes")
    assert await answers() == {"before": {(org.id, suspect.id), (org.id, queued.id)}}
