"""Rows in a backup: JSON Lines per table, each column in a form both engines load alike.

The plaintext of a backup is a sequence of lines:

    {"table": "messages", "columns": [["id", "uuid"], ["text", "plain"], ...]}
    ["0193…", "hello", ...]                       one line per row
    {"end": "messages", "rows": 2}

Each column is read and written through a *storage type*: its own SQLAlchemy type,
except that JSON columns travel as their stored text (so SQL NULL and JSON `null` stay
apart) and enum columns as their stored name. The kind in the table line says how a
value is spelled: `uuid` and `datetime`/`date`/`time` as ISO text, `bytes` in base64,
`decimal` as text, `interval` in seconds, `plain` as JSON.
"""

from __future__ import annotations

import base64
import decimal
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Dialect,
    Enum,
    MetaData,
    Select,
    String,
    Table,
    Text,
    cast,
    select,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from weflux.lifecycle.backup_file import BackupError

Encoder = Callable[[Any], Any]

_ENCODERS: dict[str, Encoder] = {
    "uuid": str,
    "datetime": lambda value: value.isoformat(),
    "date": lambda value: value.isoformat(),
    "time": lambda value: value.isoformat(),
    "bytes": lambda value: base64.b64encode(value).decode("ascii"),
    "decimal": str,
    "interval": lambda value: value.total_seconds(),
    "plain": lambda value: value,
}
_DECODERS: dict[str, Encoder] = {
    "uuid": uuid.UUID,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "bytes": lambda value: base64.b64decode(value, validate=True),
    "decimal": decimal.Decimal,
    "interval": lambda value: timedelta(seconds=value),
    "plain": lambda value: value,
}
_KINDS: list[tuple[type, str]] = [
    (uuid.UUID, "uuid"),
    (datetime, "datetime"),  # before date: a datetime is a date
    (date, "date"),
    (time, "time"),
    (bytes, "bytes"),
    (decimal.Decimal, "decimal"),
    (timedelta, "interval"),
]


class RawJSON(TypeDecorator[str]):
    """A JSON column as its stored text: written as is, read through `CAST(... AS TEXT)`."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


def storage_type(column: Column[Any]) -> TypeEngine[Any]:
    """The type a column is copied through (see the module's docstring)."""
    kind = column.type
    if isinstance(kind, JSON | RawJSON):
        return RawJSON()
    if isinstance(kind, Enum):
        return String()
    return kind


def kind_of(storage: TypeEngine[Any]) -> str:
    if isinstance(storage, RawJSON):
        return "plain"
    if isinstance(storage, TypeDecorator):
        storage = storage.impl_instance
    try:
        python_type = storage.python_type
    except NotImplementedError:
        return "plain"
    for base, kind in _KINDS:
        if issubclass(python_type, base):
            return kind
    return "plain"


@dataclass(frozen=True)
class TableLayout:
    """A table's columns as a backup holds them, with their storage types."""

    name: str
    columns: list[tuple[str, str]]  # (column, kind)
    table: Table  # a stand-alone Table of the storage types, to select from or insert into

    @classmethod
    def of(cls, table: Table, model: Table | None = None) -> TableLayout:
        """The layout of `table`, each column typed by the model's column of its name if any.

        A database at an older schema revision is reflected (`table`); its columns keep
        the models' types (a UUID stays a UUID on SQLite) wherever the models have them.
        """
        storage = {
            column.name: storage_type(
                model.c[column.name] if model is not None and column.name in model.c else column
            )
            for column in table.columns
        }
        columns = [(name, kind_of(kind)) for name, kind in storage.items()]
        return cls._build(table.name, columns, storage)

    @classmethod
    def _build(
        cls, name: str, columns: list[tuple[str, str]], storage: dict[str, TypeEngine[Any]]
    ) -> TableLayout:
        table = Table(name, MetaData(), *(Column(column, storage[column]) for column, _ in columns))
        return cls(name, columns, table)

    @classmethod
    def for_restore(
        cls, name: str, columns: list[tuple[str, str]], model: Table | None, target: Table
    ) -> TableLayout:
        """The layout of a table read from a backup, typed by the model or the target."""
        storage: dict[str, TypeEngine[Any]] = {}
        for column, kind in columns:
            if kind not in _DECODERS:
                raise BackupError(f"table `{name}`: column `{column}` has an unknown kind")
            if model is not None and column in model.c:
                storage[column] = storage_type(model.c[column])
            elif column in target.c:
                storage[column] = storage_type(target.c[column])
            else:
                raise BackupError(
                    f"table `{name}` has no column `{column}` at the backup's schema revision"
                )
        return cls._build(name, columns, storage)

    def select(self) -> Select[Any]:
        """Every column, JSON ones as their stored text."""
        return select(
            *(
                cast(column, Text).label(column.name)
                if isinstance(column.type, RawJSON)
                else column
                for column in self.table.columns
            )
        ).select_from(self.table)

    def start_line(self) -> bytes:
        return _line({"table": self.name, "columns": [list(pair) for pair in self.columns]})

    def encoders(self) -> list[Encoder]:
        return [_ENCODERS[kind] for _, kind in self.columns]

    def row_line(self, row: Iterable[Any], encoders: list[Encoder]) -> bytes:
        values = [
            None if value is None else encode(value)
            for value, encode in zip(row, encoders, strict=True)
        ]
        return _line(values)

    def decode(self, values: list[Any]) -> dict[str, Any]:
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise BackupError(f"table `{self.name}`: a row has the wrong number of values")
        row: dict[str, Any] = {}
        for value, (column, kind) in zip(values, self.columns, strict=True):
            try:
                row[column] = None if value is None else _DECODERS[kind](value)
            except (ValueError, TypeError, ArithmeticError):
                raise BackupError(
                    f"table `{self.name}`: column `{column}` holds a value that is not {kind}"
                ) from None
        return row


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def end_line(name: str, rows: int) -> bytes:
    return _line({"end": name, "rows": rows})


@dataclass(frozen=True)
class TableStart:
    name: str
    columns: list[tuple[str, str]]


@dataclass(frozen=True)
class TableEnd:
    name: str
    rows: int


Record = TableStart | TableEnd | list[Any]


def records(chunks: Iterable[bytes]) -> Iterator[Record]:
    """Parse the plaintext of a backup (chunks that may split lines) into records.

    Checks the structure as it goes: rows only inside a table, each table ended with
    its row count, and every table closed at the end.
    """
    pending = b""
    current: str | None = None
    rows = 0
    for chunk in chunks:
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            record = _parse(line)
            if isinstance(record, TableStart):
                if current is not None:
                    raise BackupError(f"table `{current}` is not closed before the next one")
                current, rows = record.name, 0
            elif isinstance(record, TableEnd):
                if record.name != current or record.rows != rows:
                    raise BackupError(f"table `{record.name}` ends with the wrong row count")
                current = None
            elif current is None:
                raise BackupError("a row stands outside any table")
            else:
                rows += 1
            yield record
    if pending or current is not None:
        raise BackupError("the data ends inside a table")


def _parse(line: bytes) -> Record:
    try:
        value = json.loads(line)
    except ValueError:
        raise BackupError("a line of the data is not JSON") from None
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("table"), str) and isinstance(value.get("columns"), list):
            columns = value["columns"]
            if all(
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
                for pair in columns
            ):
                return TableStart(value["table"], [(pair[0], pair[1]) for pair in columns])
        if isinstance(value.get("end"), str) and isinstance(value.get("rows"), int):
            return TableEnd(value["end"], value["rows"])
    raise BackupError("a line of the data is neither a table nor a row")
