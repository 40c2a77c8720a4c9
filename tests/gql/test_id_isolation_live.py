"""Every subscription that takes an id (the table of tests/fixtures/id_operations.py), over a
real socket: another workspace's ids deliver nothing of it, on both brokers and engines; and
a subscription a role may not start is FORBIDDEN to it. Queries and mutations that take an
id run over the socket too, with the other workspace's ids: NOT_FOUND, as over HTTP.

An id of the wrong type (another workspace's object of another type, the caller's own of
the wrong type) is refused at once with NOT_FOUND. Another workspace's conversation id is an
id of the right type: the subscription listens, and must stay silent while that workspace
has a message, a status change and a note in that very conversation.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from starlette.applications import Starlette

from tests.fixtures import webhooks as wh
from tests.fixtures.api import gql
from tests.fixtures.factories import Actor
from tests.fixtures.id_operations import (
    FIELDS,
    NODE,
    OPERATIONS,
    RANK,
    attempts,
    stated_role,
    with_id,
)
from tests.fixtures.isolation import NODE_TYPES, Furnished, Pair, furnish_pair, snapshot
from tests.fixtures.live import inbound, listeners, status_update, until_listening
from tests.fixtures.schema_documents import document_of, root_type
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Organization, Role

SUBSCRIBED = sorted(name for name, (root, _) in FIELDS.items() if root == "Subscription")
# Subscriptions without an id that some role may not start.
GUARDED = sorted(
    name
    for name, field in root_type("subscription").fields.items()
    if name not in FIELDS and stated_role(field) != Role.AGENT
)
ADD_NOTE = "mutation ($input: AddNoteInput!) { addNote(input: $input) { id } }"
EVERY_NOTE = "subscription { noteAdded { id text } }"


def _codes(frame: dict[str, Any]) -> list[str]:
    if frame["type"] == "error":
        return [error["extensions"]["code"] for error in frame["payload"]]
    return [error["extensions"]["code"] for error in frame["payload"].get("errors", [])]


async def _add_note(client: httpx.AsyncClient, workspace: Furnished, text: str) -> None:
    """The workspace's Admin notes `text` on its conversation."""
    added = await gql(
        client,
        workspace.tokens[Role.ADMIN],
        ADD_NOTE,
        {"input": {"conversationId": workspace.gid("Conversation"), "text": text}},
    )
    assert "errors" not in added.json(), added.text


async def _queries_and_mutations(socket: GraphQLSocket, pair: Pair, role: Role) -> list[str]:
    """Each query and mutation taking an id, run over the socket with Globex's object of
    the type each slot takes (`node`: of every type): NOT_FOUND (FORBIDDEN below the
    field's role), nothing of Globex's, as over HTTP."""
    failures = []
    for name in sorted(name for name, (root, _) in FIELDS.items() if root != "Subscription"):
        op = OPERATIONS[name]
        codes = ["NOT_FOUND"] if RANK[role] >= RANK[op.role] else ["NOT_FOUND", "FORBIDDEN"]
        for slot, is_list in FIELDS[name][1].items():
            types = NODE_TYPES if op.types[slot] == NODE else (op.types[slot],)
            nothing = None
            if op.filter:  # what an id naming nothing answers
                unknown = encode_global_id(op.types[slot], uuid.uuid4())
                variables = with_id(op.own(pair.ours), slot, unknown, is_list)
                answer = await socket.next(await socket.subscribe(op.document, variables))
                nothing = answer["payload"]["data"]
            for t in types:
                variables = with_id(op.own(pair.ours), slot, pair.theirs.gid(t), is_list)
                frame = await socket.next(await socket.subscribe(op.document, variables))
                if nothing is not None and frame["payload"].get("data") == nothing:
                    continue
                found = _codes(frame)
                if len(found) != 1 or found[0] not in codes or _leaks(frame, pair.theirs):
                    failures.append(f"{name}({slot}: Globex's {t}) as {role.value}: {frame}")
    return failures


def _leaks(frame: dict[str, Any], theirs: Furnished) -> list[str]:
    return [secret for secret in theirs.secrets if secret in str(frame)]


async def test_subscriptions_with_another_workspaces_ids_deliver_nothing_of_it(
    broker_app: Starlette,
    served: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_admin: Actor,
) -> None:
    # Given Acme and Globex with an object of every type; Globex's number and customer are
    # the ones the webhook factories write to
    pair = await furnish_pair(
        served,
        db,
        owner_db,
        (org, admin, manager, agent),
        (other_org, other_admin),
        account={
            "phone_number_id": wh.PHONE_NUMBER_ID,
            "display_phone_number": wh.DISPLAY_PHONE_NUMBER,
            "business_account_id": wh.WABA_ID,
        },
        contact={"wa_id": wh.CUSTOMER_WA_ID},
    )
    ours, theirs = pair.ours, pair.theirs
    base = str(served.base_url)
    listening = listeners(broker_app)
    # and Globex's Admin watching every event of these subscriptions in Globex
    globex = await GraphQLSocket.connect(base, theirs.tokens[Role.ADMIN])
    watched = {name: await globex.subscribe(OPERATIONS[name].document) for name in SUBSCRIBED}
    listening += len(watched)
    rows = await snapshot(owner_db, theirs.org.id)

    # When Acme's Admin, Manager and Agent subscribe with Globex's ids of every type (and
    # the Admin with Acme's own of the wrong type), each also watching Acme's notes
    sockets: dict[Role, GraphQLSocket] = {}
    live: list[tuple[Role, str, str]] = []
    witnesses: dict[Role, str] = {}
    failures: list[str] = []
    for role, token in ours.tokens.items():
        socket = sockets[role] = await GraphQLSocket.connect(base, token)
        for name in SUBSCRIBED:
            op = OPERATIONS[name]
            for slot, is_list in FIELDS[name][1].items():
                for attempt in attempts(pair, op.types[slot], role):
                    variables = with_id(op.own(ours), slot, attempt.value, is_list)
                    operation = await socket.subscribe(op.document, variables)
                    label = f"{name}({slot}: {attempt.what}) as {role.value}"
                    if attempt.names == op.types[slot]:  # it listens
                        live.append((role, operation, label))
                        continue
                    # Then an id of the wrong type is refused at once
                    frame = await socket.next(operation)
                    if _codes(frame) != ["NOT_FOUND"] or _leaks(frame, theirs):
                        failures.append(f"{label}: {frame}")
        for name in GUARDED:  # and those their role may not start are refused
            if RANK[role] < RANK[stated_role(root_type("subscription").fields[name])]:
                frame = await socket.next(await socket.subscribe(document_of(name, "subscription")))
                if _codes(frame) != ["FORBIDDEN"]:
                    failures.append(f"{name} as {role.value}: {frame}")
        failures += await _queries_and_mutations(socket, pair, role)
        witnesses[role] = await socket.subscribe(EVERY_NOTE)
    await until_listening(broker_app, listening + len(live) + len(witnesses))
    assert await snapshot(owner_db, theirs.org.id) == rows  # the mutations changed nothing

    # And Globex has a message, a status change and a note in its conversation
    await inbound(served, "Globex live text", sender=wh.CUSTOMER_WA_ID)
    await status_update(served, theirs.outbound_wamid, "delivered")
    await _add_note(served, theirs, "Globex live note")
    for name, operation in watched.items():  # published: Globex's Admin has each
        frame = await globex.next(operation)
        assert frame["type"] == "next", (name, frame)
        assert "errors" not in frame["payload"], (name, frame)
    # and after that, Acme has a note
    await _add_note(served, ours, "Acme live note")

    # Then each Acme socket has Acme's note, and nothing on the subscriptions naming Globex's
    for role, socket in sockets.items():
        frame = await socket.next(witnesses[role])
        assert frame["payload"]["data"]["noteAdded"]["text"] == "Acme live note", frame
        assert not _leaks(frame, theirs), frame
        await socket.ping()
    for role, operation, label in live:
        frames = sockets[role].received(operation)
        if frames:
            failures.append(f"{label}: {frames}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
    for socket in [globex, *sockets.values()]:
        await socket.close()
