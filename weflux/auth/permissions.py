# ruff: noqa: RUF001  (the matrix uses the en dash of the contract)
"""Role -> permissions: the one table that says who may do what.

GraphQL permission classes (`weflux.gql.permissions`) and services read it; the
role matrix in docs/security/README.md is rendered from it and a test holds the two together.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from weflux.models import Role


class Permission(enum.StrEnum):
    READ_WORKSPACE = "read_workspace"  # workspace, members, WhatsApp accounts
    INVITE_AGENTS = "invite_agents"
    INVITE_ANY_ROLE = "invite_any_role"
    MANAGE_MEMBERS = "manage_members"  # change roles, remove members, others' sessions
    MANAGE_OWN_ACCOUNT = "manage_own_account"  # own sessions and password
    MANAGE_CHANNELS = "manage_channels"  # WhatsApp accounts and SMTP settings
    REFRESH_CHANNEL_HEALTH = "refresh_channel_health"
    SEE_ALL_CONVERSATIONS = "see_all_conversations"  # otherwise: own and unassigned
    REPLY = "reply"  # reply, change status, mark read (on visible conversations)
    START_CONVERSATIONS = "start_conversations"  # write first, with an approved template
    ASSIGN_ANYONE = "assign_anyone"
    ASSIGN_SELF = "assign_self"  # self-assign an unassigned one, unassign self
    MANAGE_CONTACTS = "manage_contacts"  # otherwise: read through visible conversations
    READ_AUDIT = "read_audit"  # audit and security events, data deletion and export
    MANAGE_SECURITY = "manage_security"  # the workspace's two-factor policy, members' resets
    MANAGE_TEAM_TOOLS = "manage_team_tools"  # labels and canned replies (everyone uses them)


_EVERYONE = frozenset(
    {
        Permission.READ_WORKSPACE,
        Permission.MANAGE_OWN_ACCOUNT,
        Permission.REPLY,
        Permission.START_CONVERSATIONS,
        Permission.ASSIGN_SELF,
    }
)
_MANAGER = _EVERYONE | {
    Permission.INVITE_AGENTS,
    Permission.REFRESH_CHANNEL_HEALTH,
    Permission.SEE_ALL_CONVERSATIONS,
    Permission.ASSIGN_ANYONE,
    Permission.MANAGE_CONTACTS,
    Permission.MANAGE_TEAM_TOOLS,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset(_MANAGER),
    Role.AGENT: _EVERYONE,
}


# Operations (GraphQL root fields) that need an authentication of the session within
# WEFLUX_REAUTHENTICATION_WINDOW, whatever the role (CONTRACT §9; weflux.gql.policy
# enforces it before execution, for the roles that may run them: the others get
# FORBIDDEN). Names of operations not built yet are listed too, so that they are
# sensitive from the moment they exist.
SENSITIVE_OPERATIONS: frozenset[str] = frozenset(
    {
        # WhatsApp credentials and SMTP settings
        "connectWhatsAppAccount",
        "updateWhatsAppCredentials",
        "disconnectWhatsAppAccount",
        "updateSmtpSettings",
        # role changes and member removal
        "updateMemberRole",
        "removeMember",
        # exports, erasure, workspace deletion
        "exportContactData",
        "requestWorkspaceExport",
        "eraseContact",
        "requestWorkspaceDeletion",
        # two factors: one's own off, a member's reset, the workspace's policy; and
        # enrolling, so that a stolen session cannot bind its own authenticator app
        "beginTwoFactorEnrollment",
        "disableTwoFactor",
        "resetMemberTwoFactor",
        "updateOrganizationSecurity",
    }
)

# What a member without two factors may still do in a workspace that requires them
# (anything else answers TWO_FACTOR_REQUIRED; logging out is POST /auth/logout).
ENROLLMENT_OPERATIONS: frozenset[str] = frozenset(
    {"beginTwoFactorEnrollment", "confirmTwoFactorEnrollment", "__typename"}
)
# What an Admin may still run while the workspace's deletion is scheduled (its grace
# period; CONTRACT §7): cancel it, export, and keep their own account safe or leave it.
# Anything else answers FORBIDDEN (weflux.gql.policy); queries and subscriptions stay
# allowed. Re-authenticating and logging out are HTTP routes (/auth/...), outside this.
# docs/lifecycle.md says why each is here.
GRACE_PERIOD_OPERATIONS: frozenset[str] = frozenset(
    {
        "cancelWorkspaceDeletion",
        "requestWorkspaceExport",
        "exportContactData",
        # ending sessions only takes access away
        "revokeSession",
        # an Admin's own credentials: a new password, two factors and their codes
        "changePassword",
        "beginTwoFactorEnrollment",
        "confirmTwoFactorEnrollment",
        "regenerateRecoveryCodes",
        "__typename",
    }
)
DELETING_WORKSPACE_MESSAGE = (
    "This workspace is being deleted: only cancelWorkspaceDeletion and exports are allowed"
)
MUST_ENROLL_MESSAGE = (
    "This workspace requires two-factor authentication: enroll first "
    "(beginTwoFactorEnrollment, then confirmTwoFactorEnrollment)"
)


def has_permission(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def may_invite(inviter: Role, invitee: Role) -> bool:
    """Admins invite any role; Managers invite Agents only."""
    if has_permission(inviter, Permission.INVITE_ANY_ROLE):
        return True
    return invitee == Role.AGENT and has_permission(inviter, Permission.INVITE_AGENTS)


def _yes(permission: Permission) -> Callable[[Role], str]:
    return lambda role: "✓" if has_permission(role, permission) else "–"


def _either(permission: Permission, yes: str, otherwise: str) -> Callable[[Role], str]:
    return lambda role: yes if has_permission(role, permission) else otherwise


def _invite(role: Role) -> str:
    if has_permission(role, Permission.INVITE_ANY_ROLE):
        return "any role"
    return "AGENT only" if has_permission(role, Permission.INVITE_AGENTS) else "–"


def _assign(role: Role) -> str:
    if has_permission(role, Permission.ASSIGN_ANYONE):
        return "anyone"
    if has_permission(role, Permission.ASSIGN_SELF):
        return "self-assign an unassigned one, unassign self"
    return "–"


MATRIX: list[tuple[str, Callable[[Role], str]]] = [
    (
        "read workspace, members, WhatsApp accounts (health, limits)",
        _yes(Permission.READ_WORKSPACE),
    ),
    ("invite members", _invite),
    ("change roles, remove members, read/revoke others' sessions", _yes(Permission.MANAGE_MEMBERS)),
    ("read/revoke own sessions, change own password", _yes(Permission.MANAGE_OWN_ACCOUNT)),
    (
        "connect/update/disconnect WhatsApp accounts, SMTP settings",
        _yes(Permission.MANAGE_CHANNELS),
    ),
    (
        "see conversations",
        _either(Permission.SEE_ALL_CONVERSATIONS, "all", "assigned to self, or unassigned"),
    ),
    ("reply, change status, mark read", _either(Permission.REPLY, "visible ones", "–")),
    (
        "start a conversation with a template (assigned to the starter)",
        _yes(Permission.START_CONVERSATIONS),
    ),
    ("assign", _assign),
    (
        "contacts list/create/update",
        _either(Permission.MANAGE_CONTACTS, "✓", "only via visible conversations (read)"),
    ),
    (
        "create/update/delete labels and canned replies (everyone uses them)",
        _yes(Permission.MANAGE_TEAM_TOOLS),
    ),
    ("audit and security events, data deletion and export", _yes(Permission.READ_AUDIT)),
]


def may(role: Role) -> str:
    """What `role` may do, read from MATRIX (the schema's description of each role)."""
    granted = []
    for label, cell in MATRIX:
        value = cell(role)
        if value != "–":
            granted.append(label if value == "✓" else f"{label}: {value}")
    return "May " + "; ".join(granted) + "."


ROLE_MEANINGS: dict[Role, str] = {role: may(role) for role in Role}


def who_may(permission: Permission) -> str:
    """The roles granted `permission`, strongest first, as the API names them."""
    roles = [role for role in Role if has_permission(role, permission)]
    if len(roles) == len(Role):
        return "every role"
    names = [role.value for role in roles]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def render_matrix() -> str:
    """The role matrix as a Markdown table (docs/security/README.md carries it verbatim)."""
    roles = [Role.ADMIN, Role.MANAGER, Role.AGENT]
    lines = [
        "| capability | " + " | ".join(role.value for role in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for label, cell in MATRIX:
        lines.append(f"| {label} | " + " | ".join(cell(role) for role in roles) + " |")
    return "\n".join(lines)
