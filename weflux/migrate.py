"""Schema migrations (Alembic) and the grants that let the app's role use the tables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from weflux.db import prepare_sqlite_file
from weflux.sqlite_driver import driver_options

if TYPE_CHECKING:
    from weflux.crypto.keyring import KeyRing

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent


def migrations_dir() -> Path:
    """The Alembic scripts: shipped inside the wheel, or at the root of a checkout."""
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migrations directory is missing from this installation")


# The `config.attributes` key of the key ring, for the migrations that rewrite keyed
# values (0037: recovery codes); None when no WEFLUX_ENCRYPTION_KEYS is configured.
KEYRING = "keyring"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.attributes["url"] = url
    return config


class MigrationError(RuntimeError):
    """Migrations cannot proceed; the message says what to fix."""


class SchemaOutOfDate(RuntimeError):
    """The database's schema is behind this release's migrations; `weflux migrate` fixes it."""


def _grant_app_role(connection: Connection, role: str) -> None:
    exists = connection.execute(
        text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).first()
    if exists is None:
        raise MigrationError(
            f"the role `{role}` of WEFLUX_DATABASE_URL does not exist; create it with "
            f"CREATE ROLE {role} LOGIN PASSWORD '...' NOSUPERUSER NOBYPASSRLS"
        )
    quoted = connection.dialect.identifier_preparer.quote(role)
    connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {quoted}"))
    connection.execute(
        text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}")
    )
    connection.execute(text(f"REVOKE ALL ON TABLE alembic_version FROM {quoted}"))
    # Read only: the app checks at start that the schema is current (`schema_problem`).
    connection.execute(text(f"GRANT SELECT ON TABLE alembic_version TO {quoted}"))
    connection.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}"))
    # The cross-workspace functions (weflux.auth.crossings), revoked from PUBLIC.
    connection.execute(text(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {quoted}"))


async def migrate(
    migration_url: str,
    *,
    app_url: str | None = None,
    revision: str = "head",
    keyring: KeyRing | None = None,
) -> None:
    """Upgrade to `revision` as the schema owner, then grant the app's role its rights.

    The grant runs when the app connects as another PostgreSQL role than the owner
    (WEFLUX_DATABASE_URL vs WEFLUX_DATABASE_MIGRATION_URL). `keyring` (the app's
    WEFLUX_ENCRYPTION_KEYS) is for the migrations that rewrite keyed values; one that
    finds such values to rewrite fails without it.
    """
    owner = make_url(migration_url)
    app_role = make_url(app_url).username if app_url else None
    prepare_sqlite_file(owner)
    # SQLite: on weflux's driver, so a migration's deletes overwrite too (secure_delete).
    engine = create_async_engine(owner, poolclass=NullPool, **driver_options(owner))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_upgrade, revision, keyring)
            await connection.commit()
            if owner.get_backend_name() == "postgresql" and app_role and app_role != owner.username:
                await connection.run_sync(_grant_app_role, app_role)
                await connection.commit()
    finally:
        await engine.dispose()
    log.info("database migrated", extra={"revision": revision})


async def downgrade(migration_url: str, revision: str) -> None:
    engine = create_async_engine(migration_url, poolclass=NullPool, **driver_options(migration_url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_downgrade, revision)
            await connection.commit()
    finally:
        await engine.dispose()


def upgrade_in_transaction(
    connection: Connection, revision: str, keyring: KeyRing | None = None
) -> None:
    """Upgrade to `revision` inside the connection's open transaction (it commits nothing)."""
    _upgrade(connection, revision, keyring)


def head_revision() -> str:
    """This release's latest migration."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the migrations have {len(heads)} heads; merge them")
    return str(heads[0])


def is_known_revision(revision: str) -> bool:
    """Whether this release's migrations hold `revision`."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _upgrade(connection: Connection, revision: str, keyring: KeyRing | None = None) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes[KEYRING] = keyring
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _schema_problem(connection: Connection) -> tuple[str | None, str | None]:
    """(why this schema must not be served, or else a reason to warn), or (None, None)."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    if current == heads:
        return None, None
    at = ", ".join(sorted(current)) or "no migration"
    try:
        script.get_revisions(tuple(current))
    except CommandError:
        return None, (
            f"the database schema is at {at}, which this release does not know "
            "(a newer release migrated it); it may not work"
        )
    needed = ", ".join(sorted(heads))
    return (
        f"the database schema is at {at}, this release needs {needed}: "
        "run `weflux migrate` before starting the server"
    ), None


async def ensure_current_schema(engine: AsyncEngine, *, strict: bool) -> None:
    """Refuse (`strict`: raise `SchemaOutOfDate`) or warn when migrations are pending.

    A schema at a revision this release does not know (a newer release migrated it, and
    this one is a rollback) is only a warning. The check reads `alembic_version` only.
    """
    try:
        async with engine.connect() as connection:
            refusal, warning = await connection.run_sync(_schema_problem)
    except ProgrammingError:
        # The app role got its grants from a release that did not let it read the revision.
        refusal, warning = (
            (
                "the database role of WEFLUX_DATABASE_URL may not read alembic_version: "
                "run `weflux migrate` (it grants that read) before starting the server"
            ),
            None,
        )
    if refusal is not None and strict:
        raise SchemaOutOfDate(refusal)
    if refusal or warning:
        log.warning(refusal or warning)
