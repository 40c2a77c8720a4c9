"""The grace period of a workspace deletion (CONTRACT §7): an Admin may only cancel,
export and keep their own account safe; reads stay open (weflux.gql.policy).

Every mutation of the schema is tried: its document is made from the schema itself, so a
mutation added later is refused during the grace period without touching this file,
unless it is added to `GRACE_PERIOD_OPERATIONS`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import text
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import postgres_only, waiting_for_a_lock
from tests.fixtures.deletion import schedule_deletion
from tests.fixtures.factories import Actor, create_contact
from tests.fixtures.inbox import Api, gid
from tests.fixtures.isolation import snapshot
from tests.fixtures.live import closed_with, live_server
from tests.fixtures.outbound import Scene, all_messages
from tests.fixtures.schema_documents import SCHEMA, document_of
from tests.fixtures.two_factor import enroll, require_two_factors
from tests.fixtures.ws import GraphQLSocket
from weflux.auth.permissions import DELETING_WORKSPACE_MESSAGE, GRACE_PERIOD_OPERATIONS
from weflux.db import Database
from weflux.models import MessageStatus

MUTATIONS = SCHEMA.mutation_type
assert MUTATIONS is not None
NAMES = frozenset(MUTATIONS.fields)
REFUSED = sorted(NAMES - GRACE_PERIOD_OPERATIONS)
REQUEST = 'requestWorkspaceDeletion(confirmOrganizationName: "Acme") { id }'
DELETE = f"mutation {{ {REQUEST} }}"
CANCEL = "mutation { cancelWorkspaceDeletion { id status } }"
EXPORT = "mutation { requestWorkspaceExport { kind status } }"
EXPORT_CONTACT = "mutation($id: ID!) { exportContactData(contactId: $id) { kind status } }"
ORGANIZATION = "{ organization { deletionScheduledAt } }"
LABEL = 'createLabel(input: {name: "after", color: "#00aa00"}) { name }'
CREATE_LABEL = f"mutation {{ {LABEL} }}"


def refusal(body: dict[str, Any] | list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The errors of an answer, or of a socket's `error` frame (a list), with their codes."""
    errors = body if isinstance(body, list) else body.get("errors", [])
    return [(e["message"], e["extensions"]["code"]) for e in errors]


DELETING = [(DELETING_WORKSPACE_MESSAGE, "FORBIDDEN")]


def test_the_allowed_mutations_are_in_the_schema() -> None:
    assert GRACE_PERIOD_OPERATIONS - {"__typename"} <= NAMES
    assert {"cancelWorkspaceDeletion", "requestWorkspaceExport", "exportContactData"} <= (
        GRACE_PERIOD_OPERATIONS
    )


async def test_during_the_grace_period_only_the_allowed_mutations_run(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a workspace whose deletion is scheduled and its Admin logged in again,
    when they run every mutation of the schema that is not allowed, then each is FORBIDDEN
    and nothing changes; reads, exports and cancelling run; after the cancellation the
    same session runs any mutation again."""
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session)
    assert "errors" not in await Api(client)(admin, DELETE)
    api = Api(client)
    scheduled = await api(admin, ORGANIZATION)
    assert scheduled["data"]["organization"]["deletionScheduledAt"] is not None
    before = await snapshot(owner_db, admin.org_id)

    refused = {name: refusal(await api(admin, document_of(name))) for name in REFUSED}
    mixed = await api(admin, f"mutation {{ cancelWorkspaceDeletion {{ id }} {LABEL} }}")

    assert {name: codes for name, codes in refused.items() if codes != DELETING} == {}
    assert refusal(mixed) == DELETING  # one refused field refuses the whole operation
    assert await snapshot(owner_db, admin.org_id) == before

    exported = await api(admin, EXPORT)
    contact_export = await api(admin, EXPORT_CONTACT, {"id": gid("Contact", contact.id)})
    cancelled = await api(admin, CANCEL)
    assert exported["data"]["requestWorkspaceExport"]["kind"] == "WORKSPACE_EXPORT"
    assert contact_export["data"]["exportContactData"]["kind"] == "CONTACT_EXPORT"
    assert cancelled["data"]["cancelWorkspaceDeletion"]["status"] == "CANCELLED"

    again = {name: refusal(await api(admin, document_of(name))) for name in REFUSED}
    assert {name: codes for name, codes in again.items() if codes == DELETING} == {}
    assert (await api(admin, CREATE_LABEL))["data"] == {"createLabel": {"name": "after"}}


async def test_an_admin_who_must_enroll_enrolls_then_cancels(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a scheduled deletion in a workspace that requires two factors, and its Admin
    without them, then other mutations are refused for the deletion, cancelling asks for
    enrollment first, and once enrolled (allowed in the grace period) the Admin cancels."""
    assert "errors" not in await Api(client)(admin, DELETE)
    await require_two_factors(db, admin.org_id)
    token = await token_for(client, admin)

    refused = (await gql(client, token, CREATE_LABEL)).json()
    early = (await gql(client, token, CANCEL)).json()
    await enroll(client, token)
    cancelled = (await gql(client, token, CANCEL)).json()

    assert refusal(refused) == DELETING
    assert [code for _, code in refusal(early)] == ["TWO_FACTOR_REQUIRED"]
    assert cancelled["data"]["cancelWorkspaceDeletion"]["status"] == "CANCELLED"


async def test_the_grace_period_holds_over_the_websocket(
    broker_app: Starlette, admin: Actor
) -> None:
    """Given a socket opened before the deletion is requested, then it closes (4401) with
    its session; a socket opened during the grace period reads, but its mutations other
    than the allowed ones are FORBIDDEN; once the deletion is cancelled (over HTTP), the
    same socket runs them."""
    async with (
        live_server(broker_app) as live,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=live) as http,
    ):
        before = Api(http)
        early = await GraphQLSocket.connect(live, await before.token(admin))
        assert "errors" not in await before(admin, DELETE)
        assert await closed_with(early) == 4401

        api = Api(http)
        socket = await GraphQLSocket.connect(live, await api.token(admin))
        read = await socket.next(await socket.subscribe(ORGANIZATION))
        refused = await socket.next(await socket.subscribe(CREATE_LABEL))
        assert read["payload"]["data"]["organization"]["deletionScheduledAt"] is not None
        assert refusal(refused["payload"]) == DELETING

        assert "errors" not in await api(admin, CANCEL)
        created = await socket.next(await socket.subscribe(CREATE_LABEL))
        assert created["payload"]["data"] == {"createLabel": {"name": "after"}}
        await socket.close()


async def test_no_document_shape_gets_a_refused_mutation_past_the_grace_period(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a scheduled deletion, when a refused mutation hides behind an allowed one's
    alias, a fragment, an inline fragment, or a named operation beside a query in one
    document, then FORBIDDEN and nothing changes; the query of that document (chosen by
    operationName) and a mutation of `__typename` alone run (held, pinned: the rule
    judges the operation that runs, by field names, not aliases)."""
    assert "errors" not in await Api(client)(admin, DELETE)
    api = Api(client)
    token = await api.token(admin)
    await api(admin, ORGANIZATION)  # the session's first use touches it
    before = await snapshot(owner_db, admin.org_id)
    several = f"query Read {{ organization {{ name }} }} mutation Write {{ {LABEL} }}"

    shapes = [
        f"mutation {{ cancelWorkspaceDeletion: {LABEL} }}",
        f"mutation {{ ...F }} fragment F on Mutation {{ {LABEL} }}",
        f"mutation {{ __typename ... on Mutation {{ {LABEL} }} }}",
    ]
    refused = [refusal(await api(admin, shape)) for shape in shapes]
    chosen = (
        await client.post(
            "/graphql",
            json={"query": several, "operationName": "Write"},
            headers={"Authorization": f"Bearer {token}"},
        )
    ).json()
    read = (
        await client.post(
            "/graphql",
            json={"query": several, "operationName": "Read"},
            headers={"Authorization": f"Bearer {token}"},
        )
    ).json()
    typename = await api(admin, "mutation { __typename }")

    assert refused == [DELETING] * len(shapes)
    assert refusal(chosen) == DELETING
    assert read["data"] == {"organization": {"name": "Acme"}}
    assert typename["data"] == {"__typename": "Mutation"}
    assert await snapshot(owner_db, admin.org_id) == before


async def test_a_mutation_judged_before_the_deletion_commits_nothing_after_it(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a session that knew of no deletion (its principal cached, as a mutation
    running when the deletion was requested was judged), when the deletion is scheduled
    and then its mutation commits, then FORBIDDEN and nothing changes: the rule is read
    again, under the workspace's lock, just before the commit (committed before)."""
    api = Api(client)
    await api(admin, ORGANIZATION)
    await schedule_deletion(db, admin.org_id)
    before = await snapshot(owner_db, admin.org_id)

    created = await api(admin, CREATE_LABEL)

    assert refusal(created) == DELETING
    assert await snapshot(owner_db, admin.org_id) == before


async def test_a_socket_mutation_judged_before_the_deletion_commits_nothing_after_it(
    broker_app: Starlette, db: Database, owner_db: Database, admin: Actor
) -> None:
    """The same over a socket opened before the deletion (committed before)."""
    async with (
        live_server(broker_app) as live,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=live) as http,
    ):
        socket = await GraphQLSocket.connect(live, await Api(http).token(admin))
        await schedule_deletion(db, admin.org_id)
        before = await snapshot(owner_db, admin.org_id)

        created = await socket.next(await socket.subscribe(CREATE_LABEL))

        assert refusal(created["payload"]) == DELETING
        assert await snapshot(owner_db, admin.org_id) == before
        await socket.close()


SEND = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id status } }"


@postgres_only
async def test_a_reply_running_when_the_deletion_is_requested_commits_first_and_fails(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor, scene: Scene
) -> None:
    """Given an Admin's sendMessage past every check and held at its write (the
    conversation's row locked elsewhere), when the deletion is requested meanwhile, then
    the request waits for the reply (the workspace's deletion lock, which every mutation
    shares from its start), and fails it once committed: never left QUEUED (it was,
    committed after the deletion with the number's credentials gone, before). PostgreSQL:
    SQLite writes one transaction at a time; the test above pins its commit check."""
    api = Api(client)
    variables = {
        "input": {"conversationId": gid("Conversation", scene.conversation.id), "text": "hi"}
    }
    await api.token(admin)
    async with owner_db.engine.connect() as holder:
        await holder.execute(
            text("SELECT id FROM conversations WHERE id = :id FOR NO KEY UPDATE"),
            {"id": scene.conversation.id},
        )
        reply = asyncio.create_task(api(admin, SEND, variables))
        await asyncio.wait_for(waiting_for_a_lock(owner_db), 30)
        deletion = asyncio.create_task(api(admin, DELETE))
        await asyncio.wait_for(waiting_for_a_lock(owner_db, backends=2), 30)
        await holder.rollback()
    replied, deleted = await reply, await deletion

    assert "errors" not in replied, replied
    assert "errors" not in deleted, deleted
    [message] = await all_messages(db, admin.org_id)
    assert (message.status, message.error_title) == (MessageStatus.FAILED, "workspace deletion")


async def test_a_deletion_request_beside_another_mutation_runs_neither(
    client: httpx.AsyncClient, owner_db: Database, admin: Actor
) -> None:
    """Given one document that requests the deletion and then creates a label, then
    BAD_USER_INPUT before either runs, on both engines, and nothing changes: the request
    runs alone, or beside the mutations a grace period allows (as an export is). It used
    to commit with the label on PostgreSQL, the label written inside the grace period it
    had just begun, and be refused whole at the commit check on SQLite."""
    api = Api(client)
    await api(admin, ORGANIZATION)
    before = await snapshot(owner_db, admin.org_id)
    both = f"mutation {{ {REQUEST} {LABEL} }}"

    answer = await api(admin, both)
    unchanged = await snapshot(owner_db, admin.org_id)
    with_an_export = await api(admin, f"mutation {{ {REQUEST} requestWorkspaceExport {{ kind }} }}")

    assert [code for _, code in refusal(answer)] == ["BAD_USER_INPUT"], answer
    assert answer.get("data") is None
    assert unchanged == before
    assert "errors" not in with_an_export, with_an_export
