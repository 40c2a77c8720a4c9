"""Who is calling, once authenticated: a member acting in one workspace, with a role.

`weflux.auth.authenticator` turns an access token into a `Principal`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from weflux.auth.permissions import Permission, has_permission
from weflux.errors import Forbidden
from weflux.models import Role


@dataclass(frozen=True)
class Principal:
    """An authenticated member acting in one workspace."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    session_id: uuid.UUID
    membership_id: uuid.UUID
    role: Role
    token_expires_at: datetime
    # The workspace requires two factors and this user has none yet: only enrolling is
    # allowed (weflux.gql.policy).
    must_enroll: bool = False
    # The workspace's deletion was scheduled when the session was looked up. Every
    # session ends when a deletion is requested, so one opened before never carries it
    # stale; a cancellation may have come since (weflux.gql.policy reads it again).
    workspace_deleting: bool = False

    def can(self, permission: Permission) -> bool:
        return has_permission(self.role, permission)

    def require(
        self, permission: Permission, message: str = "Your role does not allow this"
    ) -> None:
        """FORBIDDEN unless the caller's role grants `permission`."""
        if not self.can(permission):
            raise Forbidden(message)


def restricted_agent(principal: Principal) -> uuid.UUID | None:
    """The membership whose visibility narrows `principal`'s reads (the scoping layer's
    Agent restriction), or None where the role sees every conversation of the workspace."""
    if principal.can(Permission.SEE_ALL_CONVERSATIONS):
        return None
    return principal.membership_id


def visibility_class(principal: Principal) -> str:
    """Members who see the same conversations: every ADMIN and MANAGER of a workspace
    (one class), each Agent alone. The key under which live work is shared."""
    agent = restricted_agent(principal)
    return f"all:{principal.org_id}" if agent is None else f"agent:{agent}"
