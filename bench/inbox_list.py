"""The inbox list's pages in a large workspace, as an Admin and as an Agent: CPU and plans.

    .venv/bin/python -m bench.inbox_list [--engine sqlite|postgresql|both]
        [--sizes 10000,200000] [--pages 3] [--runs 15] [--plans] [--shapes search,label]
        [--share 0.05]

For each engine and size, a fresh migrated database (SQLite: a file; PostgreSQL: a clone
of the test cluster's template, the app's restricted role, row-level security on) holds
one workspace of that many conversations (`tests.fixtures.plans.inbox_workspace`: twenty
members, 5 % assigned to the measured Agent, 5 % to nobody (`--share`: 0.01 gives each
one in a hundred), the rest to others; 20 %
OPEN; one in ten labelled one way, one in two another; one in a hundred without a
message yet), then VACUUM ANALYZE
(PostgreSQL, as autovacuum would; SQLite has no statistics, as in the app). For each of
the inbox's filters (none, status OPEN, assignee ME, UNASSIGNED, OPEN + ME, OPEN +
UNASSIGNED, each label, the tenth with OPEN, the half with OPEN, ME, UNASSIGNED and OPEN + ME, a
search) and each role it reads the first page and page
`--pages` (by its cursor) of `conversations(first: 50)` through `list_conversations` in
a scoped session, `--runs` times after two warm-ups, and prints the median CPU per page:
this process's (ORM, driver, SQLite itself) plus, on PostgreSQL, the server backend's
(its CPU clock, same machine; parallel workers off in the measured transactions, as
their CPU is not the backend's).

The floor, in the same run and session: the same page's rows read bare by primary key
(`SELECT * FROM conversations WHERE id IN (…)` on the session's connection: no ORM, no
scoping). A page that reads a page keeps its ratio to the floor as the workspace grows;
the run exits 1 when a judged shape's ratio at the largest size is over GROWTH_GOAL
times its ratio at the smallest (a shape with an empty page at either size is not
judged: `--share 0.01` leaves the Agent no OPEN conversation of the rarer label at
10,000). The search filters are printed, not judged
(docs/operations/performance.md says why). `--plans` prints each
statement's plan (EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY PLAN on SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Uuid, bindparam, event, text
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.fanout import process_cpu_seconds
from tests.fixtures.databases import PostgresTemplate
from tests.fixtures.plans import InboxWorkspace, inbox_workspace
from tests.fixtures.principals import principal_of
from weflux.auth.principal import Principal
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import ConversationStatus, Role
from weflux.services.conversations import AssigneeFilter, list_conversations

PAGE = 50
# A shape is bounded when its ratio to the floor at the largest size is at most this
# many times its ratio at the smallest (by default the workspace grows twenty-fold).
GROWTH_GOAL = 2.0
FLOOR = text("SELECT * FROM conversations WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True, type_=Uuid())
)


@dataclass(frozen=True)
class Shape:
    name: str
    status: ConversationStatus | None = None
    assignee: AssigneeFilter = AssigneeFilter.ANY
    label: str | None = None  # InboxWorkspace's attribute: "label" (10 %), "half_label"
    search: str | None = None
    # Not bounded by a page (docs/operations/performance.md): printed, not judged.
    judged: bool = True


SHAPES = (
    Shape("all"),
    Shape("OPEN", status=ConversationStatus.OPEN),
    Shape("ME", assignee=AssigneeFilter.ME),
    Shape("UNASSIGNED", assignee=AssigneeFilter.UNASSIGNED),
    Shape("OPEN+ME", status=ConversationStatus.OPEN, assignee=AssigneeFilter.ME),
    Shape("OPEN+UNASSIGNED", status=ConversationStatus.OPEN, assignee=AssigneeFilter.UNASSIGNED),
    # A label on one conversation in ten, and one on every other, alone and with the
    # filters above (an Agent's page with a status: migrations 0031, 0032).
    Shape("label", label="label"),
    Shape("label half", label="half_label"),
    Shape("label+OPEN", status=ConversationStatus.OPEN, label="label"),
    Shape("label half+OPEN", status=ConversationStatus.OPEN, label="half_label"),
    Shape("label half+ME", assignee=AssigneeFilter.ME, label="half_label"),
    Shape("label half+UNASSIGNED", assignee=AssigneeFilter.UNASSIGNED, label="half_label"),
    Shape(
        "label half+OPEN+ME",
        status=ConversationStatus.OPEN,
        assignee=AssigneeFilter.ME,
        label="half_label",
    ),
    # Searches (contacts "Contact <n>", WhatsApp ids 49<n, ten digits>): a common term
    # (every contact, another case), a tenth of them, a rare one (111 at 200,000), one
    # that matches nothing, a phone number fragment typed with punctuation, and a term
    # of two characters (no trigram: read as before).
    Shape("search common", search="contact", judged=False),
    Shape("search tenth", search="Contact 1", judged=False),
    Shape("search rare", search="Contact 777", judged=False),
    Shape("search none", search="Zebra", judged=False),
    Shape("search phone", search="0012 34", judged=False),
    Shape("search short", search="77", judged=False),
)


@contextmanager
def captured(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements run inside, with their parameters."""
    found: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if (
            statement.lstrip().upper().startswith(("SELECT", "WITH", "("))
            and "set_config" not in statement
        ):
            found.append((statement, parameters))

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", capture)


class Meter:
    """CPU of this process and, on PostgreSQL, of the session's server backend (its
    transaction without parallel workers, whose CPU that clock would miss)."""

    def __init__(self) -> None:
        self.backend: int | None = None

    async def attach(self, session: AsyncSession) -> None:
        connection = await session.connection()
        if connection.dialect.name == "postgresql":
            result = await connection.exec_driver_sql("SELECT pg_backend_pid()")
            self.backend = int(result.scalar_one())
            # A parallel worker's CPU is not the backend's: the whole statement in it.
            await connection.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")

    def now(self) -> float:
        server = process_cpu_seconds(self.backend) if self.backend else 0.0
        return time.process_time() + server


async def _scoped(session: AsyncSession, principal: Principal) -> None:
    if principal.role == Role.AGENT:
        restrict_to_agent(session, principal.membership_id)


async def measure(
    db: Database, ws: InboxWorkspace, principal: Principal, shape: Shape, pages: int, runs: int
) -> tuple[float, float, int, list[tuple[str, Any]]]:
    """(median CPU ms of the later page, of its floor, rows on it, the page's statement)."""
    kwargs: dict[str, Any] = {
        "status": shape.status,
        "assignee": shape.assignee,
        "search": shape.search,
        "label": getattr(ws, shape.label) if shape.label else None,
    }
    after: str | None = None
    async with db.session(ws.org_id) as session:
        await _scoped(session, principal)
        for _ in range(pages - 1):
            page = await list_conversations(session, principal, first=PAGE, after=after, **kwargs)
            if not page.has_next_page:
                break
            after = page.items[-1][1]
    page_times: list[float] = []
    floor_times: list[float] = []
    statements: list[tuple[str, Any]] = []
    rows = 0
    for run in range(runs + 2):
        async with db.session(ws.org_id) as session:
            await _scoped(session, principal)
            meter = Meter()
            await meter.attach(session)
            with captured(db) as seen:
                started = meter.now()
                page = await list_conversations(
                    session, principal, first=PAGE, after=after, **kwargs
                )
                took = meter.now() - started
            ids = [row.id for row, _ in page.items]
            connection = await session.connection()
            started = meter.now()
            floor = (await connection.execute(FLOOR, {"ids": ids})).all()
            floor_took = meter.now() - started
        assert len(floor) == len(ids)
        rows = len(ids)
        statements = seen
        if run >= 2:  # warm-up
            page_times.append(took * 1000)
            floor_times.append(floor_took * 1000)
    return statistics.median(page_times), statistics.median(floor_times), rows, statements


async def explain(
    db: Database, ws: InboxWorkspace, principal: Principal, statement: str, params: Any
) -> list[str]:
    async with db.session(ws.org_id) as session:
        await _scoped(session, principal)
        connection = await session.connection()
        prefix = (
            "EXPLAIN QUERY PLAN "
            if connection.dialect.name == "sqlite"
            else "EXPLAIN (ANALYZE, BUFFERS) "
        )
        result = await connection.exec_driver_sql(prefix + statement, params)
        rows: list[Any] = list(result.all())
        if connection.dialect.name == "sqlite":
            return [f"{row[1]}:{row[0]}:{row[3]}" for row in rows]
        return [str(row[0]) for row in rows]


Ratios = dict[tuple[str, str, str], float]


async def run_size(
    db: Database, size: int, args: argparse.Namespace, analyze: Callable[[], Awaitable[None]]
) -> Ratios:
    """Each shape's median page ÷ floor in a workspace of `size` conversations."""
    ws = await inbox_workspace(db, size, share=args.share)
    await analyze()
    ratios: Ratios = {}
    engine = db.engine.dialect.name
    for role, actor in (("Admin", ws.admin), ("Agent", ws.agent)):
        principal = principal_of(actor)
        for shape in SHAPES:
            if args.shapes and not shape.name.startswith(tuple(args.shapes.split(","))):
                continue
            for pages in (1, args.pages):
                page_ms, floor_ms, rows, statements = await measure(
                    db, ws, principal, shape, pages, args.runs
                )
                ratio = page_ms / floor_ms
                if shape.judged and rows:  # an empty page has no page's cost to compare
                    ratios[(role, shape.name, f"page {pages}")] = ratio
                print(
                    f"{engine} {size:>7} {role:5} {shape.name:16} page {pages:>2}: "
                    f"{page_ms:7.2f} ms CPU, floor {floor_ms:5.2f} ms, {ratio:5.1f}x "
                    f"({rows} rows){'' if shape.judged else ' (not judged)'}",
                    flush=True,
                )
                if args.plans:
                    for statement, params in statements:
                        plan = await explain(db, ws, principal, statement, params)
                        print("\n".join("      " + line for line in plan))
    return ratios


async def _on_sqlite(size: int, args: argparse.Namespace) -> Ratios:
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-"))
    url = f"sqlite+aiosqlite:///{workdir}/bench.db"
    await migrate(url)
    db = Database(url)

    async def no_statistics() -> None:  # the app gathers none on SQLite
        return None

    try:
        return await run_size(db, size, args, no_statistics)
    finally:
        await db.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


async def _on_postgresql(size: int, args: argparse.Namespace) -> Ratios:
    template = PostgresTemplate()
    await template.build()
    urls = await template.clone()
    db = Database(urls.app)
    owner = Database(urls.owner, maintenance=True)

    async def vacuum() -> None:  # what autovacuum keeps up: statistics, the visibility map
        async with owner.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(
                "VACUUM ANALYZE conversations, contacts, conversation_labels"
            )

    try:
        return await run_size(db, size, args, vacuum)
    finally:
        await db.dispose()
        await owner.dispose()
        template.drop_later(urls)
        template.destroy()


async def run_engine(engine: str, sizes: list[int], args: argparse.Namespace) -> bool:
    """Each size in turn; whether every judged shape stayed bounded (GROWTH_GOAL)."""
    by_size = {}
    for size in sizes:
        by_size[size] = await (_on_sqlite if engine == "sqlite" else _on_postgresql)(size, args)
    small, large = by_size[min(sizes)], by_size[max(sizes)]
    met = True
    print(
        f"{engine}: ratio to the floor at {max(sizes)} ÷ at {min(sizes)} conversations "
        f"(the Agent's share and nobody's {args.share:.0%} each)"
    )
    for key in small.keys() - large.keys():
        print(f"  {' '.join(key):28} not judged: no rows at {max(sizes)}")
    for key in large.keys() - small.keys():
        print(f"  {' '.join(key):28} not judged: no rows at {min(sizes)}")
    for key in [key for key in small if key in large]:
        growth = large[key] / small[key]
        verdict = "ok" if growth <= GROWTH_GOAL else f"over {GROWTH_GOAL}"
        met = met and growth <= GROWTH_GOAL
        name = " ".join(key)
        print(f"  {name:28} {small[key]:5.1f}x -> {large[key]:5.1f}x: {growth:4.2f} {verdict}")
    return met


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--sizes", default="10000,200000")
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--plans", action="store_true")
    parser.add_argument(
        "--shapes", default="", help="only the shapes whose names start so (comma-separated)"
    )
    parser.add_argument(
        "--share",
        type=float,
        default=0.05,
        help="the Agent's share of the conversations, and nobody's (0.05: 5 %% each)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = ("sqlite", "postgresql") if args.engine == "both" else (args.engine,)
    met = True
    for engine in engines:
        met = await run_engine(engine, sizes, args) and met
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    asyncio.run(main())
