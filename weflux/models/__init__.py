"""Every table, imported here so that metadata and the scoping registry are complete."""

from weflux.models.audit import AuditEvent
from weflux.models.auth_session import AuthSession
from weflux.models.base import OrgScoped, new_id, utcnow, workspace_models
from weflux.models.inbox import (
    CONVERSATION_STATUS_MEANINGS,
    MESSAGE_DIRECTION_MEANINGS,
    MESSAGE_STATUS_MEANINGS,
    MESSAGE_TYPE_MEANINGS,
    STATUS_RANK,
    Contact,
    Conversation,
    ConversationStatus,
    Message,
    MessageDirection,
    MessageStatus,
    MessageType,
    TemplateStatusEvent,
    WebhookEvent,
    WebhookEventStatus,
    listed_message,
    moves_forward,
)
from weflux.models.incident import (
    INCIDENT_STATUS_MEANINGS,
    Incident,
    IncidentNotice,
    IncidentStatus,
    IncidentWorkspace,
)
from weflux.models.invitation import Invitation
from weflux.models.lifecycle import (
    OPEN_STATUSES,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    ErasureLedgerEntry,
)
from weflux.models.media import MediaFile, MediaOrigin, MediaStatus, StoredObjectIntent
from weflux.models.membership import Membership, Role
from weflux.models.organization import Organization
from weflux.models.pending_signup import PendingSignup
from weflux.models.reaction import MessageReaction, contact_reactor, member_reactor
from weflux.models.removal import ConversationRemoval, RemovalReason
from weflux.models.security import (
    AlertChannel,
    AlertStatus,
    PlatformSecurityEvent,
    SecurityAlert,
    SecurityEvent,
    SecuritySeverity,
)
from weflux.models.teamtools import CannedReply, ConversationLabel, Label, Note
from weflux.models.user import User
from weflux.models.whatsapp import (
    ACCOUNT_STATUS_MEANINGS,
    QUALITY_RATING_MEANINGS,
    AccountStatus,
    MessageTemplate,
    QualityRating,
    SmtpSettings,
    WhatsAppAccount,
)

__all__ = [
    "ACCOUNT_STATUS_MEANINGS",
    "CONVERSATION_STATUS_MEANINGS",
    "INCIDENT_STATUS_MEANINGS",
    "MESSAGE_DIRECTION_MEANINGS",
    "MESSAGE_STATUS_MEANINGS",
    "MESSAGE_TYPE_MEANINGS",
    "OPEN_STATUSES",
    "QUALITY_RATING_MEANINGS",
    "STATUS_RANK",
    "AccountStatus",
    "AlertChannel",
    "AlertStatus",
    "AuditEvent",
    "AuthSession",
    "CannedReply",
    "Contact",
    "Conversation",
    "ConversationLabel",
    "ConversationRemoval",
    "ConversationStatus",
    "DataRequest",
    "DataRequestKind",
    "DataRequestStatus",
    "ErasureLedgerEntry",
    "Incident",
    "IncidentNotice",
    "IncidentStatus",
    "IncidentWorkspace",
    "Invitation",
    "Label",
    "MediaFile",
    "MediaOrigin",
    "MediaStatus",
    "Membership",
    "Message",
    "MessageDirection",
    "MessageReaction",
    "MessageStatus",
    "MessageTemplate",
    "MessageType",
    "Note",
    "OrgScoped",
    "Organization",
    "PendingSignup",
    "PlatformSecurityEvent",
    "QualityRating",
    "RemovalReason",
    "Role",
    "SecurityAlert",
    "SecurityEvent",
    "SecuritySeverity",
    "SmtpSettings",
    "StoredObjectIntent",
    "TemplateStatusEvent",
    "User",
    "WebhookEvent",
    "WebhookEventStatus",
    "WhatsAppAccount",
    "contact_reactor",
    "listed_message",
    "member_reactor",
    "moves_forward",
    "new_id",
    "utcnow",
    "workspace_models",
]
