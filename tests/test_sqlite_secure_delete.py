"""SQLite: every connection weflux opens overwrites what it deletes (`PRAGMA secure_delete`).

Debian's SQLite (this machine's) is built with secure_delete on; python.org's, Homebrew's
and most others are not. `off_by_default` stands in for such a build: every sqlite3
connection opened during the test starts with it off, as there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from weflux.db import Database, begin_read_only
from weflux.migrate import downgrade, migrate


class _OffByDefaultConnection(sqlite3.Connection):
    """A sqlite3 connection as a build without SQLITE_SECURE_DELETE opens it; it records
    the setting it has when closed."""

    closed_with: list[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA secure_delete = OFF").close()

    def close(self) -> None:
        self.closed_with.append(self.execute("PRAGMA secure_delete").fetchone()[0])
        super().close()


@pytest.fixture
def off_by_default() -> Iterator[list[int]]:
    """sqlite3 connections open with secure_delete off; yields each one's setting at close."""
    closed_with: list[int] = []
    real = sqlite3.connect

    class Connection(_OffByDefaultConnection):
        pass

    Connection.closed_with = closed_with

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, factory=Connection, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", connect)
        yield closed_with


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'secure.db'}"


SECURE_DELETE = text("PRAGMA secure_delete")


async def test_the_stand_in_turns_it_off(off_by_default: list[int], tmp_path: Path) -> None:
    """Given the stand-in for a build without it, a plain sqlite3 connection has it off."""
    connection = sqlite3.connect(tmp_path / "plain.db")
    assert connection.execute("PRAGMA secure_delete").fetchone()[0] == 0
    connection.close()


async def test_writers_and_readers_have_secure_delete_on(
    off_by_default: list[int], url: str
) -> None:
    """Given a SQLite build whose default is off, when the app's engine opens its
    connections (a unit that writes, one that only reads, the readers' engine), then
    each has secure_delete on."""
    await migrate(url)
    db = Database(url)
    try:
        async with db.engine.begin() as writer:
            assert (await writer.execute(SECURE_DELETE)).scalar() == 1
            async with db.reader_engine.connect() as reader:  # a second connection
                assert (await reader.execute(SECURE_DELETE)).scalar() == 1
        async with db.sessionmaker() as session:
            await begin_read_only(session)
            connection = await session.connection()
            assert (await connection.execute(SECURE_DELETE)).scalar() == 1
    finally:
        await db.dispose()
    assert off_by_default
    assert set(off_by_default) == {1}


async def test_migrations_have_secure_delete_on(off_by_default: list[int], url: str) -> None:
    """Given a SQLite build whose default is off, when migrations run (up and down: batch
    mode copies and drops whole tables), then every connection they opened had it on."""
    await migrate(url)
    await downgrade(url, "base")
    assert len(off_by_default) >= 2
    assert set(off_by_default) == {1}
