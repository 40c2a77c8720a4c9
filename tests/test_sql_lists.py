"""`fixed_lists`: an expanding IN bound one parameter per item answers as the expanding
form does, on both dialects, and each statement and list length gets its own variant.
`array_lists` (PostgreSQL): each list one array, one form for any lengths."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import Table, bindparam, event, not_, or_, select

from tests.fixtures.factories import create_user
from weflux.db import Database
from weflux.models import Organization, User
from weflux.services.ingest import senders
from weflux.sql_lists import MAX_FIXED_ITEMS, array_lists, fixed_lists

USERS: Table = User.__table__  # type: ignore[attr-defined]

# Either list may match; the second also excludes by name (NOT IN).
BY_EMAIL_OR_NAME = select(USERS.c.email).where(
    or_(
        USERS.c.email.in_(bindparam("emails", expanding=True)),
        USERS.c.name.in_(bindparam("names", expanding=True)),
    )
)
BUT_NOT_NAMED = select(USERS.c.email).where(
    USERS.c.email.in_(bindparam("emails", expanding=True)),
    USERS.c.name.not_in(bindparam("names", expanding=True)),
)
# An IN under a NOT (an empty list must then be false, not NULL).
NEITHER = select(USERS.c.email).where(
    not_(
        or_(
            USERS.c.email.in_(bindparam("emails", expanding=True)),
            USERS.c.name.in_(bindparam("names", expanding=True)),
        )
    )
)


async def test_fixed_lists_answer_as_the_expanding_form(db: Database) -> None:
    """Given five users,
    when each statement runs with lists of 0, 1, 2 and more items than are fixed,
    then the fixed form returns exactly the rows of the expanding form."""
    async with db.session() as session:
        users = [await create_user(session) for _ in range(5)]
    emails = [u.email for u in users] + [f"nobody{i}@example.com" for i in range(MAX_FIXED_ITEMS)]
    names = [u.name for u in users]
    async with db.engine.connect() as connection:
        for statement, email_count, name_count in itertools.product(
            (BY_EMAIL_OR_NAME, BUT_NOT_NAMED, NEITHER), (0, 1, 2, MAX_FIXED_ITEMS + 1), (0, 1, 3)
        ):
            params: dict[str, Any] = {
                "emails": emails[:email_count],
                "names": names[1 : 1 + name_count],
            }
            expected = set((await connection.execute(statement, params)).scalars())
            seen = set((await connection.execute(*fixed_lists(statement, params))).scalars())
            assert seen == expected, (str(statement), email_count, name_count)


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_array_lists_answer_as_the_expanding_form_in_one_form(db: Database) -> None:
    """Given five users,
    when each statement runs with lists of 0, 1, 2 and 9 items bound as arrays,
    then it returns exactly the rows of the expanding form, and each statement sends one
    SQL text whatever the lengths (compiled once, prepared once per connection)."""
    async with db.session() as session:
        users = [await create_user(session) for _ in range(5)]
    emails = [u.email for u in users] + [f"nobody{i}@example.com" for i in range(4)]
    names = [u.name for u in users]
    sent: dict[Any, set[str]] = {}
    async with db.engine.connect() as connection:
        for statement, email_count, name_count in itertools.product(
            (BY_EMAIL_OR_NAME, BUT_NOT_NAMED, NEITHER), (0, 1, 2, 9), (0, 1, 3)
        ):
            params: dict[str, Any] = {
                "emails": emails[:email_count],
                "names": names[1 : 1 + name_count],
            }
            expected = set((await connection.execute(statement, params)).scalars())
            arrays, bound = array_lists(statement, params)
            compiled = arrays.compile(dialect=connection.dialect)
            sent.setdefault(statement, set()).add(str(compiled))
            seen = set((await connection.execute(arrays, bound)).scalars())
            assert seen == expected, (str(statement), email_count, name_count)
    assert [len(texts) for texts in sent.values()] == [1, 1, 1]


def test_each_statement_and_length_has_its_own_variant() -> None:
    one = fixed_lists(BY_EMAIL_OR_NAME, {"emails": ["a"], "names": []})
    again = fixed_lists(BY_EMAIL_OR_NAME, {"emails": ["b"], "names": []})
    two = fixed_lists(BY_EMAIL_OR_NAME, {"emails": ["a", "b"], "names": []})
    other = fixed_lists(BUT_NOT_NAMED, {"emails": ["a"], "names": []})
    assert one[0] is again[0]
    assert one[1] == {"emails_0": "a"}
    assert again[1] == {"emails_0": "b"}
    assert two[0] is not one[0]
    assert two[1] == {"emails_0": "a", "emails_1": "b"}
    assert other[0] is not one[0]
    long = fixed_lists(BY_EMAIL_OR_NAME, {"emails": ["x"] * (MAX_FIXED_ITEMS + 1), "names": []})
    assert long[0] is BY_EMAIL_OR_NAME  # the expanding form itself
    with pytest.raises(ValueError, match="shadowed"):
        fixed_lists(BY_EMAIL_OR_NAME, {"emails": ["a"], "emails_0": "b", "names": []})


LOOKUPS = {
    # A sender by `wa_id` with no `user_id`: the unique (org_id, wa_id) index.
    "senders": (
        senders._SENDERS_AND_FEED,
        {"user_ids": [], "wa_ids": ["4930123"]},
        "uq_contacts_org_id_wa_id",
        "ix_contacts_org_id_name",
    ),
}


@pytest.mark.parametrize("dialect", ["sqlite"])
@pytest.mark.parametrize("lookup", list(LOOKUPS))
async def test_the_sender_lookup_uses_its_unique_index(
    db: Database, org: Organization, lookup: str
) -> None:
    """The webhook's sender lookup, with no `user_id` (the common case), finds its contact
    by a unique index; with SQLAlchemy's rendering of the empty list SQLite read every
    contact of the workspace instead. (The status lookup has a shape per case instead:
    tests/services/test_status_plans.py.)"""
    statement, lists, index, scan = LOOKUPS[lookup]
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, sql: str, parameters: Any, *_: Any) -> None:
        seen.append((sql, parameters))

    params = {**lists, "scope_org": org.id, "feed_org": org.id}
    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    async with db.engine.connect() as connection:
        await connection.execute(*fixed_lists(statement, params))
        sql, parameters = seen[-1]
        raw = await connection.get_raw_connection()
        cursor = await raw.driver_connection.execute(  # type: ignore[union-attr]
            f"EXPLAIN QUERY PLAN {sql}", parameters
        )
        plan = " | ".join(row[3] for row in await cursor.fetchall())
    assert index in plan, plan
    assert scan not in plan, plan
