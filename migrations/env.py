"""Alembic environment: async engines, batch mode on SQLite, the models' metadata."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import weflux.models  # noqa: F401  (fills the metadata)
from weflux.sqlite_driver import driver_options

config = context.config
target_metadata = SQLModel.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=True,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction(), warnings.catch_warnings():
        # SQLite's batch rebuilds reflect the tables a rebuilt one refers to (`users`),
        # whose expression index SQLAlchemy cannot reflect and says so; that table is not
        # rebuilt, so the index stays. The warning only alarmed a first `make run`.
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", SAWarning
        )
        context.run_migrations()


async def _run_async(url: str) -> None:
    # SQLite: weflux's driver, whose connections overwrite what they delete (secure_delete).
    engine = create_async_engine(url, poolclass=NullPool, **driver_options(url))
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


def _url() -> str:
    from weflux.config import Settings

    url: Any = config.attributes.get("url") or Settings().migration_url
    return str(url)


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_async(_url()))
