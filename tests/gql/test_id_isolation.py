"""Every root field that takes an id, found in the schema, attacked with another workspace's
ids and with the caller's own ids of the wrong type; and called with its own ids by a role
below the field's (CONTRACT §3, §4).

The fields come from the code's schema, not from a list: a field taking an `ID` (an
argument, or a field of an input object, lists included) without an entry in `OPERATIONS`
fails `test_every_field_taking_an_id_has_an_entry`, naming it. Subscriptions are attacked
over a real socket in tests/gql/test_id_isolation_live.py, from the same table.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    get_named_type,
)

from tests.fixtures.api import error_codes, gql
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.isolation import NODE_TYPES, Furnished, furnish, snapshot
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.gql.schema import build_schema
from weflux.ids import encode_global_id
from weflux.models import Organization, Role

SCHEMA = build_schema()._schema
RANK = {Role.AGENT: 0, Role.MANAGER: 1, Role.ADMIN: 2}
NODE = "Node"  # a slot that takes an id of any type


# --- the schema's fields that take an id ------------------------------------------------


def _id_paths(type_: GraphQLInputType, path: str, seen: frozenset[str]) -> list[str]:
    """The paths under `path` of the ids a value of `type_` holds (`input.labelIds`)."""
    named = get_named_type(type_)
    if named.name == "ID":
        return [path]
    if isinstance(named, GraphQLInputObjectType) and named.name not in seen:
        return [
            found
            for name, field in named.fields.items()
            for found in _id_paths(field.type, f"{path}.{name}", seen | {named.name})
        ]
    return []


def _is_list(type_: GraphQLInputType) -> bool:
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    return isinstance(inner, GraphQLList)


def fields_taking_ids() -> dict[str, tuple[str, dict[str, bool]]]:
    """Root field name -> (its root type's name, {id path: whether it is a list})."""
    found: dict[str, tuple[str, dict[str, bool]]] = {}
    for root in (SCHEMA.query_type, SCHEMA.mutation_type, SCHEMA.subscription_type):
        assert isinstance(root, GraphQLObjectType)
        for name, field in root.fields.items():
            slots = {}
            for arg, spec in field.args.items():
                for path in _id_paths(spec.type, arg, frozenset()):
                    slots[path] = _is_list(_input_type_at(field, path))
            if slots:
                assert name not in found, f"{name} is a field of two root types"
                found[name] = (root.name, slots)
    return found


def _input_type_at(field: GraphQLField, path: str) -> GraphQLInputType:
    arg, *rest = path.split(".")
    type_: GraphQLInputType = field.args[arg].type
    for name in rest:
        named = get_named_type(type_)
        assert isinstance(named, GraphQLInputObjectType)
        type_ = named.fields[name].type
    return type_


# --- the table: one operation per field ------------------------------------------------


@dataclass(frozen=True)
class Op:
    """How to call a field: its document (variables named after its arguments), the type of
    the id each slot takes, the variables naming the caller's own objects, and the least
    role that may call it with those."""

    document: str
    types: dict[str, str]
    own: Callable[[Furnished], dict[str, Any]]
    role: Role = Role.AGENT
    # What a role below `role` gets for the caller's own ids: FORBIDDEN, or NOT_FOUND where
    # the object is hidden from that role (another member's session, as node(id:) hides it).
    below: str = "FORBIDDEN"
    # A filter: an id that names nothing of the caller's answers as one that does not
    # exist (an empty list), or NOT_FOUND.
    filter: bool = False


def _member(w: Furnished, actor: Actor | None) -> str:
    assert actor is not None
    return encode_global_id("Member", actor.membership.id)


NODE_DOCUMENT = """query ($id: ID!) { node(id: $id) { id __typename
  ... on Member { role user { email name } }  ... on User { email userName: name }
  ... on Organization { orgName: name }  ... on Session { ipAddress userAgent }
  ... on Invitation { email invitee: name }  ... on AuditEvent { action targetId }
  ... on SecurityEvent { summary }  ... on Incident { title }  ... on DataRequest { kind }
  ... on WhatsAppAccount { displayPhoneNumber }
  ... on MessageTemplate { templateName: name bodyText }
  ... on Contact { contactName: name phoneNumber }  ... on Conversation { contact { name } }
  ... on Message { text }  ... on Note { noteText: text }  ... on Label { labelName: name }
  ... on CannedReply { shortcut cannedText: text } } }"""
CONVERSATION = "id contact { name } lastMessage { text }"
MESSAGE = "id text conversation { contact { name } }"
TEMPLATE = "acme_welcome"  # Acme's (tests/fixtures/isolation.py)

OPERATIONS: dict[str, Op] = {
    # --- queries
    "sessions": Op(
        "query ($memberId: ID) { sessions(memberId: $memberId) { id ipAddress userAgent } }",
        {"memberId": "Member"},
        lambda w: {"memberId": w.gid("Member")},  # another member's: ADMIN
        Role.ADMIN,
    ),
    "messageTemplates": Op(
        """query ($whatsAppAccountId: ID!) {
          messageTemplates(whatsAppAccountId: $whatsAppAccountId) { id name bodyText } }""",
        {"whatsAppAccountId": "WhatsAppAccount"},
        lambda w: {"whatsAppAccountId": w.gid("WhatsAppAccount")},
    ),
    "conversations": Op(
        f"""query ($labelId: ID) {{ conversations(first: 10, labelId: $labelId) {{
          edges {{ node {{ {CONVERSATION} }} }} }} }}""",
        {"labelId": "Label"},
        lambda w: {"labelId": w.gid("Label")},
        filter=True,
    ),
    "conversation": Op(
        f"query ($id: ID!) {{ conversation(id: $id) {{ {CONVERSATION} }} }}",
        {"id": "Conversation"},
        lambda w: {"id": w.gid("Conversation")},
    ),
    "node": Op(NODE_DOCUMENT, {"id": NODE}, lambda w: {"id": w.gid("Member")}),
    # --- members, sessions, invitations, two factors
    "revokeInvitation": Op(
        "mutation ($id: ID!) { revokeInvitation(id: $id) }",
        {"id": "Invitation"},
        lambda w: {"id": w.gid("Invitation")},
        Role.MANAGER,
    ),
    "resendInvitation": Op(
        "mutation ($id: ID!) { resendInvitation(id: $id) { id email name } }",
        {"id": "Invitation"},
        lambda w: {"id": w.gid("Invitation")},
        Role.MANAGER,
    ),
    "updateMemberRole": Op(
        """mutation ($input: UpdateMemberRoleInput!) {
          updateMemberRole(input: $input) { id role user { email name } } }""",
        {"input.memberId": "Member"},
        lambda w: {"input": {"memberId": _member(w, w.manager), "role": "AGENT"}},
        Role.ADMIN,
    ),
    "removeMember": Op(
        "mutation ($memberId: ID!) { removeMember(memberId: $memberId) }",
        {"memberId": "Member"},
        lambda w: {"memberId": _member(w, w.manager)},
        Role.ADMIN,
    ),
    "revokeSession": Op(
        "mutation ($id: ID!) { revokeSession(id: $id) { id ipAddress userAgent } }",
        {"id": "Session"},
        lambda w: {"id": w.gid("Session")},  # the Admin's: another member's, ADMIN
        Role.ADMIN,
        below="NOT_FOUND",
    ),
    "resetMemberTwoFactor": Op(
        """mutation ($memberId: ID!) {
          resetMemberTwoFactor(memberId: $memberId) { id user { email name } } }""",
        {"memberId": "Member"},
        lambda w: {"memberId": _member(w, w.manager)},
        Role.ADMIN,
    ),
    # --- numbers and templates
    "updateWhatsAppCredentials": Op(
        """mutation ($input: UpdateWhatsAppCredentialsInput!) {
          updateWhatsAppCredentials(input: $input) { id displayPhoneNumber } }""",
        {"input.id": "WhatsAppAccount"},
        lambda w: {"input": {"id": w.gid("WhatsAppAccount"), "webhookVerifyToken": "x" * 24}},
        Role.ADMIN,
    ),
    "disconnectWhatsAppAccount": Op(
        """mutation ($id: ID!) {
          disconnectWhatsAppAccount(id: $id) { id displayPhoneNumber status } }""",
        {"id": "WhatsAppAccount"},
        lambda w: {"id": w.gid("WhatsAppAccount")},
        Role.ADMIN,
    ),
    "refreshWhatsAppAccountHealth": Op(
        """mutation ($id: ID!) {
          refreshWhatsAppAccountHealth(id: $id) { id displayPhoneNumber } }""",
        {"id": "WhatsAppAccount"},
        lambda w: {"id": w.gid("WhatsAppAccount")},
        Role.MANAGER,
    ),
    "syncMessageTemplates": Op(
        """mutation ($whatsAppAccountId: ID!) {
          syncMessageTemplates(whatsAppAccountId: $whatsAppAccountId) { id name bodyText } }""",
        {"whatsAppAccountId": "WhatsAppAccount"},
        lambda w: {"whatsAppAccountId": w.gid("WhatsAppAccount")},
        Role.MANAGER,
    ),
    # --- the inbox
    "updateContact": Op(
        """mutation ($input: UpdateContactInput!) {
          updateContact(input: $input) { id name phoneNumber } }""",
        {"input.id": "Contact"},
        lambda w: {"input": {"id": w.gid("Contact"), "name": "Renamed"}},
        Role.MANAGER,
    ),
    "assignConversation": Op(
        f"""mutation ($input: AssignConversationInput!) {{
          assignConversation(input: $input) {{ {CONVERSATION} }} }}""",
        {"input.conversationId": "Conversation", "input.assigneeId": "Member"},
        lambda w: {
            "input": {"conversationId": w.gid("Conversation"), "assigneeId": _member(w, w.manager)}
        },
        Role.MANAGER,  # to another member; an Agent only takes it or lets it go
    ),
    "updateConversationStatus": Op(
        f"""mutation ($input: UpdateConversationStatusInput!) {{
          updateConversationStatus(input: $input) {{ {CONVERSATION} }} }}""",
        {"input.conversationId": "Conversation"},
        lambda w: {"input": {"conversationId": w.gid("Conversation"), "status": "PENDING"}},
    ),
    "markConversationRead": Op(
        f"""mutation ($conversationId: ID!) {{
          markConversationRead(conversationId: $conversationId) {{ {CONVERSATION} }} }}""",
        {"conversationId": "Conversation"},
        lambda w: {"conversationId": w.gid("Conversation")},
    ),
    "sendMessage": Op(
        f"mutation ($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE} }} }}",
        {"input.conversationId": "Conversation"},
        lambda w: {"input": {"conversationId": w.gid("Conversation"), "text": "Hello"}},
    ),
    "sendTemplateMessage": Op(
        f"""mutation ($input: SendTemplateMessageInput!) {{
          sendTemplateMessage(input: $input) {{ {MESSAGE} }} }}""",
        {"input.conversationId": "Conversation"},
        lambda w: {
            "input": {
                "conversationId": w.gid("Conversation"),
                "templateName": TEMPLATE,
                "languageCode": "en",
                "bodyParameters": [],
            }
        },
    ),
    "startConversation": Op(
        f"""mutation ($input: StartConversationInput!) {{
          startConversation(input: $input) {{ {CONVERSATION} }} }}""",
        {"input.whatsAppAccountId": "WhatsAppAccount"},
        lambda w: {
            "input": {
                "whatsAppAccountId": w.gid("WhatsAppAccount"),
                "phoneNumber": "+16505551234",
                "templateName": TEMPLATE,
                "languageCode": "en",
                "bodyParameters": [],
            }
        },
    ),
    "reactToMessage": Op(
        f"""mutation ($input: ReactToMessageInput!) {{
          reactToMessage(input: $input) {{ {MESSAGE} }} }}""",
        {"input.messageId": "Message"},
        lambda w: {"input": {"messageId": w.gid("Message"), "emoji": "👍"}},
    ),
    "sendMedia": Op(
        f"mutation ($input: SendMediaInput!) {{ sendMedia(input: $input) {{ {MESSAGE} }} }}",
        {"input.conversationId": "Conversation", "input.mediaId": "Media"},
        lambda w: {"input": {"conversationId": w.gid("Conversation"), "mediaId": w.gid("Media")}},
    ),
    # --- team tools
    "updateLabel": Op(
        "mutation ($input: UpdateLabelInput!) { updateLabel(input: $input) { id name } }",
        {"input.id": "Label"},
        lambda w: {"input": {"id": w.gid("Label"), "name": "Renamed"}},
        Role.MANAGER,
    ),
    "deleteLabel": Op(
        "mutation ($id: ID!) { deleteLabel(id: $id) }",
        {"id": "Label"},
        lambda w: {"id": w.gid("Label")},
        Role.MANAGER,
    ),
    "setConversationLabels": Op(
        """mutation ($input: SetConversationLabelsInput!) {
          setConversationLabels(input: $input) { id contact { name } labels { name } } }""",
        {"input.conversationId": "Conversation", "input.labelIds": "Label"},
        lambda w: {"input": {"conversationId": w.gid("Conversation"), "labelIds": []}},
    ),
    "addNote": Op(
        "mutation ($input: AddNoteInput!) { addNote(input: $input) { id text } }",
        {"input.conversationId": "Conversation"},
        lambda w: {"input": {"conversationId": w.gid("Conversation"), "text": "A note"}},
    ),
    "updateCannedReply": Op(
        """mutation ($input: UpdateCannedReplyInput!) {
          updateCannedReply(input: $input) { id shortcut text } }""",
        {"input.id": "CannedReply"},
        lambda w: {"input": {"id": w.gid("CannedReply"), "text": "Renamed"}},
        Role.MANAGER,
    ),
    "deleteCannedReply": Op(
        "mutation ($id: ID!) { deleteCannedReply(id: $id) }",
        {"id": "CannedReply"},
        lambda w: {"id": w.gid("CannedReply")},
        Role.MANAGER,
    ),
    # --- security and the data lifecycle
    "acknowledgeSecurityEvent": Op(
        """mutation ($id: ID!) {
          acknowledgeSecurityEvent(id: $id) { id summary acknowledgedAt } }""",
        {"id": "SecurityEvent"},
        lambda w: {"id": w.gid("SecurityEvent")},
        Role.ADMIN,
    ),
    "eraseContact": Op(
        "mutation ($contactId: ID!) { eraseContact(contactId: $contactId) { id kind } }",
        {"contactId": "Contact"},
        lambda w: {"contactId": w.gid("Contact")},
        Role.ADMIN,
    ),
    "exportContactData": Op(
        "mutation ($contactId: ID!) { exportContactData(contactId: $contactId) { id kind } }",
        {"contactId": "Contact"},
        lambda w: {"contactId": w.gid("Contact")},
        Role.ADMIN,
    ),
    # --- subscriptions (tests/gql/test_id_isolation_live.py)
    "messageAdded": Op(
        f"""subscription ($conversationId: ID) {{
          messageAdded(conversationId: $conversationId) {{ {MESSAGE} }} }}""",
        {"conversationId": "Conversation"},
        lambda w: {"conversationId": w.gid("Conversation")},
    ),
    "messageUpdated": Op(
        f"""subscription ($conversationId: ID) {{
          messageUpdated(conversationId: $conversationId) {{ {MESSAGE} status }} }}""",
        {"conversationId": "Conversation"},
        lambda w: {"conversationId": w.gid("Conversation")},
    ),
    "noteAdded": Op(
        """subscription ($conversationId: ID) {
          noteAdded(conversationId: $conversationId) { id text } }""",
        {"conversationId": "Conversation"},
        lambda w: {"conversationId": w.gid("Conversation")},
    ),
}

FIELDS = fields_taking_ids()


def test_every_field_taking_an_id_has_an_entry() -> None:
    """A field that takes an id and is missing from OPERATIONS (or whose ids moved) fails
    here by name: add its entry, and the attacks below cover it."""
    missing = sorted(set(FIELDS) - set(OPERATIONS))
    assert not missing, f"fields taking an id without an entry in OPERATIONS: {missing}"
    stale = sorted(set(OPERATIONS) - set(FIELDS))
    assert not stale, f"entries of OPERATIONS naming no field that takes an id: {stale}"
    for name, (_, slots) in FIELDS.items():
        assert set(OPERATIONS[name].types) == set(slots), f"{name}: its ids are {sorted(slots)}"
        for slot, type_name in OPERATIONS[name].types.items():
            assert type_name == NODE or type_name in NODE_TYPES, f"{name}.{slot}: {type_name}"


ALLOWED = re.compile(r"Allowed: ([^.]*)\.")


def test_each_entrys_role_is_at_least_the_one_the_schema_states() -> None:
    """The description's `Allowed:` (from the permission table) is the least role for any
    ids; an entry may need more for its own ids (another member's session), never less."""
    root = {"Query": SCHEMA.query_type, "Mutation": SCHEMA.mutation_type}
    root["Subscription"] = SCHEMA.subscription_type
    for name, (root_name, _) in FIELDS.items():
        type_ = root[root_name]
        assert type_ is not None
        found = ALLOWED.search(type_.fields[name].description or "")
        assert found, f"{name} says not who may call it"
        stated = found.group(1)
        least = Role.AGENT if stated == "every role" else Role(stated.split()[-1].strip(","))
        assert RANK[OPERATIONS[name].role] >= RANK[least], name


# --- the attacks ------------------------------------------------------------------------


def with_id(variables: dict[str, Any], path: str, value: str, is_list: bool) -> dict[str, Any]:
    """`variables` with the id at `path` replaced by `value` (a list of it for a list)."""
    changed = copy.deepcopy(variables)
    *parents, last = path.split(".")
    target = changed
    for name in parents:
        target = target[name]
    target[last] = [value] if is_list else value
    return changed


def refusal(response: httpx.Response, field: str, codes: set[str], leaks: list[str]) -> str | None:
    """What is wrong with `response` as a refusal (None: nothing)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    body = response.json()
    found = error_codes(response)
    if len(found) != 1 or found[0] not in codes:
        return f"codes {found}, expected one of {sorted(codes)}"
    if body.get("data") not in (None, {field: None}):
        return "data answered"
    leaked = [secret for secret in leaks if secret in response.text]
    if leaked:
        return f"leaks {leaked}"
    return None


ATTACKED = sorted(name for name, (root, _) in FIELDS.items() if root != "Subscription")
# Rows an attack may add or change in the attacker's own workspace: its trail, its
# detectors' events, its sessions' last use.
TRAILS = frozenset({"audit_events", "security_events", "sessions"})


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The default settings with cost budgets that thousands of refused calls never spend."""
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        rate_limit_graphql_cost_member="10000000:100000/second",
        rate_limit_graphql_cost_workspace="10000000:100000/second",
    )


@dataclass
class Pair:
    """Acme (the attacker's workspace, every role) and Globex (the victim)."""

    ours: Furnished
    theirs: Furnished


@pytest.fixture
async def pair(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_admin: Actor,
) -> Pair:
    ours = await furnish(
        client, db, owner_db, org, admin, manager=manager, agent=agent, word="Acme"
    )
    theirs = await furnish(client, db, owner_db, other_org, other_admin, word="Globex")
    return Pair(ours, theirs)


def _attempts(pair: Pair, expected: str, role: Role) -> list[tuple[str, str]]:
    """(what, global id) to pass where an id of type `expected` is taken: Globex's objects
    of every type; for an Admin also Acme's own of the wrong type, as another type's object
    and as the right row under another type's name (the type is read before the role
    matters, so one role suffices)."""
    ours, theirs = pair.ours, pair.theirs
    attempts = [(f"Globex's {t}", theirs.gid(t)) for t in NODE_TYPES]
    if expected == NODE or role != Role.ADMIN:
        return attempts
    others = [t for t in NODE_TYPES if t != expected]
    attempts += [(f"Acme's {t}", ours.gid(t)) for t in others]
    attempts += [
        (f"Acme's {expected} named {t}", encode_global_id(t, ours.rows[expected])) for t in others
    ]
    return attempts


async def _attack(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Each field, each id slot, each role of Acme, each of `_attempts`: what went wrong,
    one line each."""
    failures: list[str] = []
    for name in ATTACKED:
        op = OPERATIONS[name]
        _, slots = FIELDS[name]
        base = op.own(pair.ours)
        for role, token in pair.ours.tokens.items():
            allowed = RANK[role] >= RANK[op.role]
            codes = {"NOT_FOUND"} if allowed else {"NOT_FOUND", "FORBIDDEN"}
            for slot, is_list in slots.items():
                nothing = None
                if op.filter:  # what an id naming nothing answers
                    unknown = encode_global_id(op.types[slot], uuid.uuid4())
                    answer = await gql(
                        client, token, op.document, with_id(base, slot, unknown, is_list)
                    )
                    nothing = answer.json()
                    assert "errors" not in nothing, f"{name}: {answer.text}"
                for what, value in _attempts(pair, op.types[slot], role):
                    variables = with_id(base, slot, value, is_list)
                    response = await gql(client, token, op.document, variables)
                    if nothing is not None and response.json()["data"] == nothing["data"]:
                        continue
                    wrong = refusal(response, name, codes, pair.theirs.secrets)
                    if wrong:
                        failures.append(
                            f"{name}({slot}: {what}) as {role.value}: {wrong}: {response.text}"
                        )
    return failures


async def _below_role(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Each field a role may not call, called by it with its own workspace's ids."""
    failures: list[str] = []
    for name in ATTACKED:
        op = OPERATIONS[name]
        for role, token in pair.ours.tokens.items():
            if RANK[role] >= RANK[op.role]:
                continue
            response = await gql(client, token, op.document, op.own(pair.ours))
            wrong = refusal(response, name, {op.below}, [])
            if wrong:
                failures.append(f"{name} as {role.value}: {wrong}: {response.text}")
    return failures


async def test_no_field_reaches_another_workspace_or_past_the_callers_role(
    client: httpx.AsyncClient, owner_db: Database, pair: Pair
) -> None:
    # Given Acme and Globex, each with an object of every type
    globex = await snapshot(owner_db, pair.theirs.org.id)
    acme = await snapshot(owner_db, pair.ours.org.id, skip=TRAILS)
    # When Acme's Admin, Manager and Agent pass Globex's ids, and their own of the wrong
    # type, wherever an id is taken; and call what their role may not with their own ids
    failures = await _attack(client, pair)
    failures += await _below_role(client, pair)
    # Then every answer is NOT_FOUND (or FORBIDDEN below the field's role), without Globex's data
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(f[:400] for f in failures)
    # And neither workspace changed
    assert await snapshot(owner_db, pair.theirs.org.id) == globex
    assert await snapshot(owner_db, pair.ours.org.id, skip=TRAILS) == acme
