"""PostgreSQL: several writes of one transaction sent as one statement.

Each write becomes a data-modifying CTE (`WITH w0 AS (INSERT …), w1 AS (UPDATE …) INSERT …`):
one round trip, and one pass through SQLAlchemy and asyncpg, instead of one per write
(issue 11: the webhook's contact, conversation, message and event rows). Every value is
a bound parameter, each named for its part and row (`i0r0_org_id`, `u1r0_added`), so one
compiled form serves every statement of the same shape; the shapes are cached here.

PostgreSQL runs the parts with one snapshot, none seeing another's rows, and checks
foreign keys at the end of the statement: the parts must not read each other's writes
(a conversation's insert may name the contact inserted beside it, as a value). A unique
index broken by any part fails the whole statement (`IntegrityError`), as separate
statements would. Row triggers (the change feed's positions) and row-level security
apply to each part as to a statement of its own. SQLite has no data-modifying CTEs: there
the same parts are sent one by one (`send_separately`).

The statement is run through the session: weflux.auth.scoping checks every part's
workspace (`_checked_insert`: each INSERT's `org_id` parameters, each UPDATE's
`core_scope`), so a part writing another workspace's row is refused before it is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, insert
from sqlalchemy.sql import Executable, visitors
from sqlalchemy.sql.dml import Insert as InsertStatement
from sqlalchemy.sql.dml import Update as UpdateStatement
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import SCOPE_ORG

# Rows beyond which writes are not folded: each value is a parameter of its own (asyncpg
# takes at most 32,767) and each count of rows a statement compiled and cached. A big
# batch pays its per-statement cost once per kind of write anyway.
MAX_ROWS = 16


@dataclass(slots=True)
class Insert:
    """Rows for one table."""

    table: Table
    rows: list[dict[str, Any]]


@dataclass(slots=True)
class Update:
    """An UPDATE built once with named parameters (`core_scope`'s among them), and the
    parameters of each row it is run for."""

    statement: UpdateStatement
    rows: list[dict[str, Any]]


Part = Insert | Update


@dataclass(slots=True)
class Writes:
    """The writes a transaction holds back to send as one statement."""

    parts: list[Part] = field(default_factory=list)

    def add(self, part: Part) -> None:
        if part.rows:
            self.parts.append(part)


def _shape(part: Part) -> tuple[Any, ...]:
    rows = tuple(tuple(row) for row in part.rows)
    if isinstance(part, Insert):
        return ("i", part.table.name, rows)
    return ("u", id(part.statement), rows)


def _insert_values(table: Table, prefix: str, keys: Sequence[str]) -> dict[str, Any]:
    """An INSERT's VALUES for one row, every value a parameter named `prefix + column`.

    Columns the row leaves out take their scalar default as a parameter: SQLAlchemy fills
    defaults only for the outermost statement. A left-out column with a computed default
    is a mistake of the caller."""
    values: dict[str, Any] = {key: bindparam(prefix + key, type_=table.c[key].type) for key in keys}
    for column in table.c:
        if column.key in values or column.default is None:
            continue
        default: Any = column.default
        if not default.is_scalar:
            raise ValueError(f"{table.name}.{column.key}: give it a value (computed default)")
        values[column.key] = bindparam(prefix + column.key, value=default.arg, type_=column.type)
    return values


def _renamed(statement: UpdateStatement, prefix: str) -> UpdateStatement:
    """`statement` with its named parameters prefixed (the workspace's is shared)."""

    def rename(element: Any, **_kw: Any) -> Any:
        if isinstance(element, BindParameter) and not element.unique and element.key != SCOPE_ORG:
            return bindparam(prefix + element.key, value=element.value, type_=element.type)
        return None

    original: Any = statement
    renamed: Any = visitors.replacement_traverse(original, {}, rename)
    return renamed  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Folded:
    statement: Executable
    # Per part, per row: (row key, parameter name).
    names: tuple[tuple[tuple[tuple[str, str], ...], ...], ...]


_FOLDED: dict[tuple[Any, ...], _Folded] = {}
_FOLDED_MAX = 512


def _build(parts: Sequence[Part]) -> _Folded:
    """The statement: the first row of the first part, an INSERT, with every other row of
    every part a CTE of its own (a multi-row VALUES would make the statement uncacheable
    in SQLAlchemy).

    PostgreSQL runs the statement itself first, then the CTEs no one reads from, the
    last written first (its executor lists them in reverse: `es_auxmodifytables`). So
    they are written in reverse: they run in the order given, and the feed trigger
    numbers their rows in that order."""
    statements: list[Any] = []
    names: list[tuple[tuple[tuple[str, str], ...], ...]] = []
    for j, part in enumerate(parts):
        rows: list[tuple[tuple[str, str], ...]] = []
        for i, row in enumerate(part.rows):
            if isinstance(part, Insert):
                prefix = f"i{j}r{i}_"
                keys = list(row)
                statements.append(
                    insert(part.table).values(_insert_values(part.table, prefix, keys))
                )
            else:
                prefix = f"u{j}r{i}_"
                keys = [k for k in row if k != SCOPE_ORG]
                statements.append(_renamed(part.statement, prefix))
            rows.append(tuple((k, prefix + k) for k in keys))
        names.append(tuple(rows))
    outer = statements[0]
    if not isinstance(outer, InsertStatement):
        raise ValueError("a folded statement begins with an INSERT")
    ctes = [statement.cte(f"w{n}") for n, statement in enumerate(statements[1:], 1)]
    return _Folded(outer.add_cte(*reversed(ctes)), tuple(names))


def fold(parts: Sequence[Part], scope: dict[str, Any]) -> tuple[Executable, dict[str, Any]]:
    """One statement of `parts` (the first an `Insert`) and its parameters."""
    key = tuple(_shape(p) for p in parts)
    folded = _FOLDED.get(key)
    if folded is None:
        if len(_FOLDED) >= _FOLDED_MAX:
            _FOLDED.clear()
        folded = _FOLDED[key] = _build(parts)
    params: dict[str, Any] = dict(scope)
    for part, rows in zip(parts, folded.names, strict=True):
        for row, names in zip(part.rows, rows, strict=True):
            for row_key, name in names:
                params[name] = row[row_key]
    return folded.statement, params


async def send(
    session: AsyncSession, writes: Writes, scope: dict[str, Any], first: Insert | None = None
) -> None:
    """Send `first` and `writes` as one statement through the session (its workspace
    checked); they run in that order, but for `first` missing: then the first INSERT of
    `writes` runs first (the statement must be one). Nothing to send: no statement."""
    parts: list[Part] = [first, *writes.parts] if first is not None else writes.parts
    writes.parts = []
    if not parts:
        return
    inserts = [i for i, p in enumerate(parts) if isinstance(p, Insert)]
    if not inserts:
        # Only UPDATEs (rare: a contact's new name, no message): one statement each.
        connection = await session.connection()
        for part in parts:
            assert isinstance(part, Update)
            await connection.execute(part.statement, [row | scope for row in part.rows])
        return
    outer = inserts[0]
    statement, params = fold([parts[outer], *parts[:outer], *parts[outer + 1 :]], scope)
    await session.exec(statement, params=params)  # type: ignore[call-overload]
