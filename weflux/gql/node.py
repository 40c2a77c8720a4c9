"""`node(id:)`: any object by its global id, through the same scoping and permissions."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.errors import NotFound
from weflux.gql.channels.templates import to_message_template
from weflux.gql.channels.types import to_whatsapp_account
from weflux.gql.context import Context
from weflux.gql.identity.types import (
    to_audit_event,
    to_invitation,
    to_member,
    to_organization,
    to_session,
    to_user,
)
from weflux.gql.inbox.team_types import to_canned_reply, to_label, to_note
from weflux.gql.inbox.types import to_contact, to_conversation, to_message
from weflux.gql.incidents.types import to_incident
from weflux.gql.lifecycle.types import to_data_request
from weflux.gql.security.types import to_security_event
from weflux.gql.types import Node
from weflux.ids import parse_global_id
from weflux.models import (
    AuditEvent,
    AuthSession,
    CannedReply,
    Contact,
    Conversation,
    DataRequest,
    Invitation,
    Label,
    Membership,
    Message,
    MessageTemplate,
    Note,
    Organization,
    SecurityEvent,
)
from weflux.models import WhatsAppAccount as WhatsAppAccountRow
from weflux.secops import incidents as incident_service
from weflux.services import members as member_service

Resolver = Callable[[Info[Context, None], uuid.UUID], Awaitable[Node | None]]


async def _member(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Membership, row_id)
    return to_member(row) if row else None


async def _user(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await member_service.member_user(info.context.unit, row_id)
    return to_user(row) if row else None


async def _organization(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Organization, row_id)
    return to_organization(row) if row else None


async def _session(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    actor = info.context.actor
    row = await info.context.unit.get(AuthSession, row_id)
    if row is None:
        return None
    if row.membership_id != actor.membership_id and not actor.can(Permission.MANAGE_MEMBERS):
        return None
    return to_session(row, actor.session_id)


async def _invitation(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    if not info.context.actor.can(Permission.INVITE_AGENTS):
        return None
    row = await info.context.unit.get(Invitation, row_id)
    return to_invitation(row) if row and row.accepted_at is None else None


async def _audit_event(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    if not info.context.actor.can(Permission.READ_AUDIT):
        return None
    row = await info.context.unit.get(AuditEvent, row_id)
    return to_audit_event(row) if row else None


async def _security_event(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    if not info.context.actor.can(Permission.READ_AUDIT):
        return None
    row = await info.context.unit.get(SecurityEvent, row_id)
    return to_security_event(row) if row else None


async def _whatsapp_account(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(WhatsAppAccountRow, row_id)  # disconnected ones too
    return to_whatsapp_account(row) if row else None


async def _message_template(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(MessageTemplate, row_id)
    return to_message_template(row) if row else None


# The inbox: the scoped session hides another workspace's rows and, from an Agent,
# conversations assigned to someone else with their messages and contacts.
async def _contact(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Contact, row_id)
    return to_contact(row) if row else None


async def _conversation(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Conversation, row_id)
    return to_conversation(row) if row else None


async def _message(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Message, row_id)
    return to_message(row) if row else None


async def _note(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Note, row_id)  # an Agent's: of visible conversations
    return to_note(row) if row else None


async def _label(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(Label, row_id)
    return to_label(row) if row else None


async def _canned_reply(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    row = await info.context.unit.get(CannedReply, row_id)
    return to_canned_reply(row) if row else None


async def _incident(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    if not info.context.actor.can(Permission.READ_AUDIT):
        return None
    found = await incident_service.workspace_incident(info.context.unit, row_id)
    return to_incident(*found) if found else None


async def _data_request(info: Info[Context, None], row_id: uuid.UUID) -> Node | None:
    if not info.context.actor.can(Permission.READ_AUDIT):
        return None
    row = await info.context.unit.get(DataRequest, row_id)
    return to_data_request(row) if row else None


RESOLVERS: dict[str, Resolver] = {
    "WhatsAppAccount": _whatsapp_account,
    "MessageTemplate": _message_template,
    "Member": _member,
    "User": _user,
    "Organization": _organization,
    "Session": _session,
    "Invitation": _invitation,
    "AuditEvent": _audit_event,
    "SecurityEvent": _security_event,
    "Contact": _contact,
    "Conversation": _conversation,
    "Message": _message,
    "Note": _note,
    "Label": _label,
    "CannedReply": _canned_reply,
    "Incident": _incident,
    "DataRequest": _data_request,
}


async def resolve_node(info: Info[Context, None], global_id: str) -> Node:
    """The object, or NOT_FOUND exactly as for one that does not exist."""
    type_name, row_id = parse_global_id(global_id)
    resolver = RESOLVERS.get(type_name)
    found = await resolver(info, row_id) if resolver else None
    if found is None:
        raise NotFound("Not found")
    return found
