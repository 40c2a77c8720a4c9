"""Before each operation: re-authentication of sensitive ones, and the two-factor policy,
over HTTP and the WebSocket (weflux.gql.policy; CONTRACT §9).

Every sensitive operation of the schema is tried: its document is made from the schema
itself (required arguments with placeholder values), so an operation added to
`SENSITIVE_OPERATIONS` or to the schema later is covered without touching this file.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from graphql import parse
from sqlalchemy import update
from sqlmodel import col
from starlette.applications import Starlette

from tests.fixtures.api import error_codes, gql, token_for, tokens_for
from tests.fixtures.app import HTTP_TIMEOUT, ClientFactory
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.live import closed_with, until_listening
from tests.fixtures.schema_documents import SCHEMA, document_of
from tests.fixtures.two_factor import REQUIRE, enroll
from tests.fixtures.ws import GraphQLSocket
from weflux.auth.permissions import SENSITIVE_OPERATIONS
from weflux.db import Database
from weflux.gql.policy import root_fields
from weflux.models import AuthSession, utcnow

MUTATIONS = SCHEMA.mutation_type
assert MUTATIONS is not None
PRESENT = sorted(SENSITIVE_OPERATIONS & set(MUTATIONS.fields))
SUBSCRIBE = "subscription { conversationUpdated { id } }"


def codes_of(frame: dict[str, Any]) -> list[str]:
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
    return [error["extensions"]["code"] for error in errors]


async def make_stale(db: Database, actor: Actor) -> None:
    async with db.session(actor.org_id) as session:
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.user_id) == actor.user.id)
            .values(authenticated_at=utcnow() - timedelta(minutes=11))
        )


def test_the_contracts_sensitive_operations_are_listed_and_those_built_are_in_the_schema() -> None:
    assert {
        "connectWhatsAppAccount",
        "updateWhatsAppCredentials",
        "disconnectWhatsAppAccount",
        "updateSmtpSettings",
        "updateMemberRole",
        "removeMember",
        "disableTwoFactor",
        "resetMemberTwoFactor",
    } <= set(PRESENT)
    assert {"eraseContact", "exportContactData", "requestWorkspaceDeletion"} <= SENSITIVE_OPERATIONS


def test_root_fields_are_found_through_fragments_and_aliases() -> None:
    document = parse(
        'mutation M { ...F ... on Mutation { b: removeMember(memberId: "x") } }'
        " fragment F on Mutation { updateSmtpSettings { __typename } }"
    )
    assert root_fields(document, "M") == {"removeMember", "updateSmtpSettings"}


async def test_every_sensitive_operation_is_refused_without_a_recent_authentication(
    make_client: ClientFactory, meta_url: str, db: Database, admin: Actor
) -> None:
    """Given an Admin whose session last authenticated 11 minutes ago (and was refreshed
    since), when they run each sensitive operation, then REAUTHENTICATION_REQUIRED; after
    POST /auth/reauthenticate the same operations run (whatever else they answer)."""
    async with make_client(meta_graph_url=meta_url) as client:
        pair = await tokens_for(client, admin)
        await make_stale(db, admin)
        refreshed = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
        token = refreshed.json()["accessToken"]

        refused = {
            name: error_codes(await gql(client, token, document_of(name))) for name in PRESENT
        }
        assert refused == {name: ["REAUTHENTICATION_REQUIRED"] for name in PRESENT}

        renewed = await client.post(
            "/auth/reauthenticate",
            json={"password": PASSWORD},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert renewed.status_code == 204
        for name in PRESENT:
            codes = error_codes(await gql(client, token, document_of(name)))
            assert "REAUTHENTICATION_REQUIRED" not in codes, name
            assert "INTERNAL_SERVER_ERROR" not in codes, name


@pytest.mark.parametrize("role", ["agent", "manager"])
async def test_a_sensitive_operation_the_role_may_not_run_is_forbidden_not_reauthentication(
    make_client: ClientFactory,
    meta_url: str,
    db: Database,
    agent: Actor,
    manager: Actor,
    role: str,
) -> None:
    """Given an Agent (or a Manager) whose session last authenticated 11 minutes ago,
    when they run each sensitive operation,
    then those their role may not run at all (exports, erasure, channels, members, the
    workspace's policy) answer FORBIDDEN, as they would after a re-authentication, not
    REAUTHENTICATION_REQUIRED (a password asked for nothing); those it may run (their
    own two factors) still need the re-authentication."""
    actor = {"agent": agent, "manager": manager}[role]
    async with make_client(meta_graph_url=meta_url) as client:
        token = await token_for(client, actor)
        await make_stale(db, actor)

        answers = {
            name: error_codes(await gql(client, token, document_of(name))) for name in PRESENT
        }

    own = {"beginTwoFactorEnrollment", "disableTwoFactor"}
    assert answers == {
        name: ["REAUTHENTICATION_REQUIRED"] if name in own else ["FORBIDDEN"] for name in PRESENT
    }


async def test_other_operations_need_no_recent_authentication(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    token = await token_for(client, admin)
    await make_stale(db, admin)
    answer = await gql(client, token, "{ viewer { role } }")
    assert answer.json()["data"] == {"viewer": {"role": "ADMIN"}}


async def test_the_policy_holds_over_the_websocket_too(
    live: str, live_app: Starlette, db: Database, admin: Actor, agent: Actor
) -> None:
    """Given an Agent without two factors with a live subscription, when an Admin requires
    two factors, then the socket closes, a new one connects but its operations answer
    TWO_FACTOR_REQUIRED, except enrolling; once enrolled, subscriptions run again."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=live) as http:
        agent_token = await token_for(http, agent)
        admin_token = await token_for(http, admin)
        socket = await GraphQLSocket.connect(live, agent_token)
        await socket.subscribe(SUBSCRIBE)
        await until_listening(live_app, 1)

        await enroll(http, admin_token)
        assert error_codes(await gql(http, admin_token, REQUIRE, {"on": True})) == []

        assert await closed_with(socket) == 4401
        again = await GraphQLSocket.connect(live, agent_token)
        refused = await again.next(await again.subscribe(SUBSCRIBE))
        query = await again.next(await again.subscribe("{ viewer { role } }"))
        begun = await again.next(
            await again.subscribe("mutation { beginTwoFactorEnrollment { otpauthUri } }")
        )
        assert refused["type"] == "error"  # a subscription is refused with an error frame
        assert codes_of(refused) == ["TWO_FACTOR_REQUIRED"]
        assert codes_of(query) == ["TWO_FACTOR_REQUIRED"]
        assert begun["payload"]["data"]["beginTwoFactorEnrollment"]["otpauthUri"]
        await again.close()

        await enroll(http, agent_token)
        after = await GraphQLSocket.connect(live, agent_token)
        answer = await after.next(await after.subscribe("{ viewer { role } }"))
        assert answer["payload"]["data"] == {"viewer": {"role": "AGENT"}}
        await after.close()


@pytest.mark.parametrize("query", ["{ __typename }", "{ __schema { queryType { name } } }"])
async def test_introspection_stays_open_to_a_member_who_must_enroll(
    client: httpx.AsyncClient, admin: Actor, agent: Actor, query: str
) -> None:
    admin_token = await token_for(client, admin)
    await enroll(client, admin_token)
    await gql(client, admin_token, REQUIRE, {"on": True})
    agent_token = await token_for(client, agent)
    assert error_codes(await gql(client, agent_token, query)) == []
