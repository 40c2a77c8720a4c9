"""Strawberry permission classes, read from the Role -> Permission table.

They sit on root fields and mutations only (never on leaf fields of list items), put
there with `guarded`, which also ends the field's description with the roles allowed.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict

from strawberry.permission import BasePermission
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
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
