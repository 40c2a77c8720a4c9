"""Related rows read ahead by a list's resolver, so each row's fields resolve without awaiting.

A connection resolver that knows its page (say `conversations`) loads the related rows
its selection asks for through the request's DataLoaders (`Loaders.x.load_many`, one
statement per kind, exactly as the per-row resolvers would batch them). A per-row field
then asks `related(loader, key, convert)`: the value at once when the loader already
holds it, else the loader's awaitable as before. So a page resolves synchronously, with
no coroutine or task per field, and every other path (one conversation, `node`, a live
event) still batches through the same loaders. Rows come through the request's scoped
unit of work either way: what a caller may not see loads as None in both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import strawberry
from graphql import GraphQLObjectType, GraphQLResolveInfo
from strawberry.dataloader import DataLoader
from strawberry.types import Info
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_DIRECT = "_weflux_direct"


def related(loader: DataLoader[K, V], key: K, convert: Callable[[V], T]) -> T:
    """`convert` of the loader's value for `key`: now when loaded, else once loaded.

    For a synchronous resolver's return only: graphql-core awaits what a resolver
    returns when it is awaitable, so such a field resolves at once whenever its row was
    prefetched. The awaitable is typed as `T` so that the resolver keeps the annotation
    Strawberry reads the field's GraphQL type from.
    """
    future = loader.cache_map.get(key)
    if (
        future is not None
        and future.done()
        and not future.cancelled()
        and future.exception() is None
    ):
        return convert(future.result())
    return cast(T, _converted(loader.load(key), convert))


async def prefetch(loader: DataLoader[K, V], keys: Iterable[K]) -> list[V | None]:
    """The values of `keys`, those the loader lacks read by its own batch function in one
    call and kept in it (cheaper than `load_many`: no future, task or gather per key).

    A key whose load failed is not kept (None here; its field then loads it again).
    """
    wanted = list(dict.fromkeys(keys))
    missing = [key for key in wanted if loader.cache_map.get(key) is None]
    if missing:
        values = await loader.load_fn(missing)
        loader.prime_many(
            {
                key: value
                for key, value in zip(missing, values, strict=True)
                if not isinstance(value, BaseException)
            }
        )
    return [_held(loader, key) for key in wanted]


def _held(loader: DataLoader[K, V], key: K) -> V | None:
    future = loader.cache_map.get(key)
    if future is None or not future.done() or future.exception() is not None:
        return None
    return future.result()


async def _converted(pending: Awaitable[V], convert: Callable[[V], T]) -> T:
    return convert(await pending)


def _included(selection: Selection) -> bool:
    """Whether `@skip`/`@include` (literal or variable, as executed) keep a selection."""
    directives = selection.directives
    if not directives:
        return True
    skip, include = directives.get("skip"), directives.get("include")
    if skip is not None and skip.get("if") is True:
        return False
    return include is None or include.get("if") is not False


def _fields(selections: Iterable[Selection]) -> Iterator[SelectedField]:
    """The fields of a selection set, those of its fragments included; a field or fragment
    that `@skip`/`@include` leaves out is left out here too (its rows are not loaded)."""
    for selection in selections:
        if not _included(selection):
            continue
        if isinstance(selection, SelectedField):
            yield selection
        elif isinstance(selection, FragmentSpread | InlineFragment):
            yield from _fields(selection.selections)


def _paths(selections: Iterable[Selection], prefix: str, into: set[str]) -> None:
    for field in _fields(selections):
        path = prefix + field.name
        into.add(path)
        _paths(field.selections, path + ".", into)


def node_selection(info: Info[Any, Any]) -> set[str]:
    """The dotted paths selected under `edges { node { ... } }` of the connection resolved.

    `{ edges { node { contact { name } assignee { user { name } } } } }` gives
    {"contact", "contact.name", "assignee", "assignee.user", "assignee.user.name"}.
    """
    wanted: set[str] = set()
    for connection in info.selected_fields:
        for edges in _fields(connection.selections):
            if edges.name != "edges":
                continue
            for node in _fields(edges.selections):
                if node.name == "node":
                    _paths(node.selections, "", wanted)
    return wanted


def direct(resolver: F) -> F:
    """Mark a per-row resolver that graphql-core may call without Strawberry's wrapper.

    Such a resolver takes no argument, has no permission class or field extension, and
    reads nothing of `info` but `info.context` (graphql-core's info has the same), so
    `call_directly` can hand it to graphql-core as is.
    """
    setattr(resolver, _DIRECT, True)
    return resolver


def call_directly(schema: strawberry.Schema) -> None:
    """Let graphql-core call the resolvers marked `direct` itself.

    Strawberry wraps every resolver to build its `Info` and convert the arguments:
    harmless once per operation, but a page of 50 conversations calls contact, assignee,
    its user and lastMessage 200 times, where the wrapper costs more than the field.
    """
    for name, graphql_type in schema._schema.type_map.items():
        definition = schema.get_type_by_name(name)
        if not isinstance(graphql_type, GraphQLObjectType) or not isinstance(
            definition, StrawberryObjectDefinition
        ):
            continue
        for field in definition.fields:
            resolver = field.base_resolver
            if resolver is None or not getattr(resolver.wrapped_func, _DIRECT, False):
                continue
            if field.arguments or field.permission_classes or field.extensions:
                raise TypeError(f"{name}.{field.python_name}: a direct resolver takes nothing")
            function = resolver.wrapped_func
            if isinstance(function, staticmethod | classmethod):
                raise TypeError(f"{name}.{field.python_name}: a direct resolver is a method")
            graphql_name = schema.config.name_converter.get_graphql_name(field)
            graphql_type.fields[graphql_name].resolve = _call(function)


def _call(function: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def resolve(source: Any, info: GraphQLResolveInfo[Any]) -> Any:
        return function(source, info)

    return resolve
