"""Statements whose `IN` lists are bound one parameter per item, cached per length.

An expanding parameter (`column.in_(bindparam("ids", expanding=True))`) keeps one
compiled form for any number of items, but SQLAlchemy re-renders the SQL string for the
items at every execution (`_process_parameters_for_postcompile`: a regular-expression
pass over the whole statement: 10 to 25 µs of the webhook's sender lookup; issue 11).
`fixed_lists` gives instead the same statement with each such list as that many plain
parameters, built once per statement and per list lengths and then compiled once like
any other, and the parameters to match.

An empty list: `NOT IN` it is `true()`; `IN` it is `IN (NULL)`, which is never true and,
unlike a constant false, is still a lookup by the column's index, so SQLite keeps its
multi-index plan for an OR of such lists (the sender lookup by `user_id` or `wa_id`
with no `user_id`: with SQLAlchemy's empty-set rendering it read every contact of the
workspace). `IN (NULL)` is NULL where the empty set is false, which a condition treats
alike; under a NOT it would not be, so an `IN` inside a NOT gets `false()`. For lists in
conditions (WHERE, ON), not in selected values.

On PostgreSQL `array_lists` binds each such list as ONE array parameter instead
(`= ANY(:ids)`): one compiled form and one prepared statement for any lengths, where a
form per length cost a compilation on the event loop and a PREPARE on each connection the
first time each length came (a queue's batches of every size; issue 11).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import ARRAY, all_, any_, bindparam, false, null, true
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    ClauseList,
    Grouping,
    UnaryExpression,
)
from sqlalchemy.sql.visitors import ExternallyTraversible

Statement = TypeVar("Statement")

# Longer lists keep the expanding form: a variant per length would then cost more
# compilations than the renderings it saves.
MAX_FIXED_ITEMS = 8

# statement -> its variants by list lengths. Weak keys: the variants go with their
# statement, and a new statement (even at a recycled address) gets its own.
_VARIANTS: weakref.WeakKeyDictionary[Any, dict[tuple[tuple[str, int], ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def fixed_lists(
    statement: Statement, params: Mapping[str, Any]
) -> tuple[Statement, dict[str, Any]]:
    """`statement` and `params` with each list parameter (of an expanding `IN`) bound as
    one parameter per item (`<name>_<i>`); unchanged when there is none or one is long."""
    lists = {key: value for key, value in params.items() if isinstance(value, list | tuple)}
    if not lists or any(len(items) > MAX_FIXED_ITEMS for items in lists.values()):
        return statement, dict(params)
    shape = tuple(sorted((key, len(items)) for key, items in lists.items()))
    variants = _VARIANTS.setdefault(statement, {})
    variant = variants.get(shape)
    if variant is None:
        variant = variants[shape] = _fixed(statement, dict(shape))
    flat = {key: value for key, value in params.items() if key not in lists}
    for key, items in lists.items():
        for i, item in enumerate(items):
            name = f"{key}_{i}"
            if name in params:
                raise ValueError(f"parameter {name} would be shadowed by list {key}")
            flat[name] = item
    return variant, flat


def _negated_lists(statement: Any) -> set[str]:
    """The expanding parameters that sit under a NOT."""
    negated: set[str] = set()
    for element in visitors.iterate(statement):
        if isinstance(element, UnaryExpression) and element.operator is operators.inv:
            negated.update(
                inner.key
                for inner in visitors.iterate(element)
                if isinstance(inner, BindParameter) and inner.expanding
            )
    return negated


def _expanding_list(element: Any) -> BindParameter[Any] | None:
    """The list parameter of an `IN` or `NOT IN` of an expanding list, else None."""
    if not isinstance(element, BinaryExpression) or element.operator not in (
        operators.in_op,
        operators.not_in_op,
    ):
        return None
    right = element.right
    return right if isinstance(right, BindParameter) and right.expanding else None


def _fixed(statement: Any, lengths: dict[str, int]) -> Any:
    negated = _negated_lists(statement) if 0 in lengths.values() else set()

    def replace(element: Any, **_kw: Any) -> Any:
        right = _expanding_list(element)
        if right is None or right.key not in lengths:
            return None
        count = lengths[right.key]
        if count == 0 and element.operator is operators.not_in_op:
            return true()
        if count == 0 and right.key in negated:
            return false()
        items = ClauseList(
            *(bindparam(f"{right.key}_{i}", type_=right.type) for i in range(count))
            if count
            else (null(),)
        )
        return BinaryExpression(
            element.left, Grouping(items), element.operator, negate=element.negate
        )

    traversable: ExternallyTraversible = statement
    return visitors.replacement_traverse(traversable, {}, replace)


# PostgreSQL: statement -> the same with each list parameter one array.
_ARRAYS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def array_lists(
    statement: Statement, params: Mapping[str, Any]
) -> tuple[Statement, dict[str, Any]]:
    """PostgreSQL: `statement` with each expanding `IN` list bound as one array
    (`column = ANY(:name)`, a `NOT IN` as `column <> ALL(:name)`), and `params` with each
    list as a list. An empty list is no special case: `= ANY` of an empty array is false,
    `<> ALL` of it true, as `IN` and `NOT IN` of an empty set."""
    variant = _ARRAYS.get(statement)
    if variant is None:
        variant = _ARRAYS[statement] = _arrays(statement)
    return variant, {
        key: list(value) if isinstance(value, tuple) else value for key, value in params.items()
    }


def _arrays(statement: Any) -> Any:
    def replace(element: Any, **_kw: Any) -> Any:
        right = _expanding_list(element)
        if right is None:
            return None
        array = bindparam(right.key, type_=ARRAY(right.type))
        if element.operator is operators.in_op:
            return element.left == any_(array)
        return element.left != all_(array)

    traversable: ExternallyTraversible = statement
    return visitors.replacement_traverse(traversable, {}, replace)
