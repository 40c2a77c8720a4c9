"""Strawberry permission classes, read from the Role -> Permission table.

They sit on root fields and mutations only (never on leaf fields of list items), put
there with `guarded`, which also ends the field's description with the roles allowed.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict

from strawberry.permission import BasePermission
from strawberry.types import Info
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.utils.str_converters import to_camel_case

from weflux.auth.permissions import SENSITIVE_OPERATIONS, Permission, who_may
from weflux.errors import ErrorCode
from weflux.gql.context import Context


@functools.cache
def requires(permission: Permission) -> type[BasePermission]:
    """A permission class admitting callers whose role grants `permission`."""

    class _Requires(BasePermission):
        required = permission
        message = "Your role does not allow this"
        error_extensions = {"code": ErrorCode.FORBIDDEN}

        def has_permission(self, source: Any, info: Info[Context, None], **kwargs: Any) -> bool:
            principal = info.context.principal
            return principal is not None and principal.can(permission)

    _Requires.__name__ = f"Requires{permission.name.title().replace('_', '')}"
    return _Requires


class Guarded(TypedDict):
    description: str
    permission_classes: list[type[BasePermission]]


def guarded(permission: Permission, description: str) -> Guarded:
    """A root field's description and permission class, from one `permission`.

    `@strawberry.field(**guarded(Permission.X, "What it does."))`: the description ends with
    the roles that may call it, read from the permission table, so the schema cannot say
    otherwise than the check does.
    """
    return Guarded(
        description=f"{description} Allowed: {who_may(permission)}.",
        permission_classes=[requires(permission)],
    )


SENSITIVE = (
    "Sensitive: the session must have authenticated within WEFLUX_REAUTHENTICATION_WINDOW "
    "(POST /auth/reauthenticate), else REAUTHENTICATION_REQUIRED."
)


def mark_sensitive(root: type) -> None:
    """Say so in the description of each of `root`'s fields that SENSITIVE_OPERATIONS
    names (before its `Allowed:` sentence); once, however often it is called."""
    definition = getattr(root, "__strawberry_definition__", None)
    assert isinstance(definition, StrawberryObjectDefinition)
    for field in definition.fields:
        name = field.graphql_name or to_camel_case(field.python_name)
        if name not in SENSITIVE_OPERATIONS or not field.description:
            continue
        if SENSITIVE in field.description:
            continue
        head, allowed, tail = field.description.rpartition(" Allowed: ")
        field.description = (
            f"{head} {SENSITIVE}{allowed}{tail}"
            if allowed
            else (f"{field.description} {SENSITIVE}")
        )


def root_permissions(root: type) -> dict[str, Permission]:
    """The permission each of `root`'s fields requires (those put there by `guarded`)."""
    definition = getattr(root, "__strawberry_definition__", None)
    assert isinstance(definition, StrawberryObjectDefinition)
    required: dict[str, Permission] = {}
    for field in definition.fields:
        name = field.graphql_name or to_camel_case(field.python_name)
        for permission_class in field.permission_classes:
            permission = getattr(permission_class, "required", None)
            if isinstance(permission, Permission):
                required[name] = permission
    return required
