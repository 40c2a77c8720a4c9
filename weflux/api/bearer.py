"""The caller of a Bearer route outside GraphQL that serves workspace data (files).

As on /graphql: no live session -> 401. And as the two-factor policy holds every
GraphQL operation but enrolling (weflux.gql.policy), a member whose workspace requires
two factors and who has not enrolled yet gets 403 `TWO_FACTOR_REQUIRED` here too
(`/media/{id}`, `/exports/{id}`): a file is data like any field.
"""

from __future__ import annotations

from starlette.requests import Request

from weflux.auth.permissions import MUST_ENROLL_MESSAGE
from weflux.auth.principal import Principal
from weflux.auth.tokens import bearer_token
from weflux.errors import TwoFactorRequired, Unauthenticated
from weflux.runtime import runtime_of


async def member(request: Request) -> Principal:
    """The authenticated member who may read the workspace's data now."""
    principal = await runtime_of(request).authenticator.authenticate(
        bearer_token(request.headers.get("authorization"))
    )
    if principal is None:
        raise Unauthenticated("Authentication required")
    if principal.must_enroll:
        raise TwoFactorRequired(MUST_ENROLL_MESSAGE)
    return principal
