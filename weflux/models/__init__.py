"""Every table, imported here so that metadata and the scoping registry are complete."""

from weflux.models.audit import AuditEvent
from weflux.models.auth_session import AuthSession
from weflux.models.base import OrgScoped, new_id, utcnow, workspace_models
from weflux.models.invitation import Invitation
from weflux.models.membership import Membership, Role
from weflux.models.organization import Organization
from weflux.models.user import User
from weflux.models.whatsapp import AccountStatus, SmtpSettings, WhatsAppAccount

__all__ = [
    "AccountStatus",
    "AuditEvent",
    "AuthSession",
    "Invitation",
    "Membership",
    "OrgScoped",
    "Organization",
    "Role",
    "SmtpSettings",
    "User",
    "WhatsAppAccount",
    "new_id",
    "utcnow",
    "workspace_models",
]
