"""Parsed and validated documents are kept per schema by their text (weflux.gql.documents).

What they decide must not change: variables still count, an invalid document is refused
every time, the cost limit, the depth limit and the introspection switch still hold
for a document the schema has seen before.
"""

from __future__ import annotations

import httpx
import pytest
from graphql import GraphQLError

from tests.fixtures.api import error_codes, gql, tokens_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import workspace
from weflux.db import Database
from weflux.gql.documents import DocumentCache, documents_of
from weflux.gql.fanout import resumes
from weflux.gql.schema import MAX_TOKENS, schema
from weflux.models import Organization, WhatsAppAccount

PAGE = """query($first: Int!) { conversations(first: $first) { edges { node { id } } } }"""
NESTED = """query($outer: Int!, $inner: Int!) { conversations(first: $outer) { edges { node {
  id messages(first: $inner) { edges { node { id } } } } } } }"""
INVALID = "{ conversations { edges { node { id nope } } } }"


@pytest.fixture
async def token(client: httpx.AsyncClient, admin: Actor) -> str:
    return str((await tokens_for(client, admin))["accessToken"])


async def test_the_same_document_with_other_variables_answers_for_them(
    client: httpx.AsyncClient,
    token: str,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
) -> None:
    """Given three conversations, when one document asks for pages of 1, 3 and 1, then
    each answer has as many as its variables asked."""
    async with workspace(db, org.id) as session:
        for _ in range(3):
            await create_conversation(session, account=account)

    # when / then
    for first in (1, 3, 1):
        body = (await gql(client, token, PAGE, {"first": first})).json()
        assert "errors" not in body, body
        assert len(body["data"]["conversations"]["edges"]) == first
        assert body["extensions"]["cost"]["nodes"] == first


async def test_an_invalid_document_is_refused_every_time_alike(
    client: httpx.AsyncClient, token: str
) -> None:
    """Given a document naming a field that does not exist, when it is sent three times,
    then each answer refuses it with the same code and message (no suggestion)."""
    # when
    answers = [(await gql(client, token, INVALID)).json() for _ in range(3)]

    # then
    assert all(answer["data"] is None for answer in answers)
    assert {str(answer["errors"]) for answer in answers} == {str(answers[0]["errors"])}
    assert [e["extensions"]["code"] for e in answers[0]["errors"]] == ["GRAPHQL_VALIDATION_FAILED"]
    assert "Did you mean" not in str(answers[0])


async def test_the_cost_limit_holds_for_a_document_seen_before(
    client: httpx.AsyncClient, token: str
) -> None:
    """Given a nested document answered once with small pages (so the schema keeps it),
    when it comes again with pages of 100 x 100 (10,100 nodes, over the limit of
    10,000), then it is refused QUERY_TOO_COMPLEX, and small pages still pass."""
    small = {"outer": 1, "inner": 1}
    assert "errors" not in (await gql(client, token, NESTED, small)).json()

    # when
    response = await gql(client, token, NESTED, {"outer": 100, "inner": 100})

    # then
    assert error_codes(response) == ["QUERY_TOO_COMPLEX"]
    assert response.json()["data"] is None
    assert "errors" not in (await gql(client, token, NESTED, small)).json()


async def test_the_depth_limit_holds_for_a_document_seen_before(
    client: httpx.AsyncClient, token: str
) -> None:
    """Given a document nested deeper than 10, when it is sent twice, then both times
    it is refused before execution."""
    shallow = "{ viewer { organization { id } user { id } } }"
    deeper = "{ conversations { edges { node { " + "lastMessage { conversation { " * 5
    deeper += "id " + "} } " * 5 + "} } } }"

    # when / then
    for _ in range(2):
        assert "errors" not in (await gql(client, token, shallow)).json()
        response = await gql(client, token, deeper)
        assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]
        assert response.json()["data"] is None


async def test_introspection_stays_off_for_a_document_seen_before(
    make_client: ClientFactory, admin: Actor
) -> None:
    """Given an app without introspection, when one introspection document is sent
    twice, then both times it is refused, and the API itself still answers."""
    query = '{ __type(name: "Member") { fields { name } } }'
    async with make_client(graphql_introspection=False) as client:
        token = (await tokens_for(client, admin))["accessToken"]

        # when / then
        for _ in range(2):
            response = await gql(client, token, query)
            assert response.json()["data"] is None
            assert set(error_codes(response)) == {"GRAPHQL_VALIDATION_FAILED"}
        assert "errors" not in (await gql(client, token, "{ viewer { id } }")).json()


@pytest.mark.parametrize(
    "document",
    ["{ conversations { edges { node { id ", "{ " + "id " * 5000 + "}"],
    ids=["unparsable", "too-many-tokens"],
)
async def test_a_document_that_does_not_parse_is_refused_every_time_and_never_kept(
    client: httpx.AsyncClient, token: str, document: str
) -> None:
    """Given a truncated document and one over the token limit, when each is sent twice,
    then both answers refuse it as GRAPHQL_VALIDATION_FAILED, and a parse cache asked
    for it raises the parse error and keeps nothing."""
    # when
    answers = [await gql(client, token, document) for _ in range(2)]

    # then
    for response in answers:
        assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]
    documents = DocumentCache()
    with pytest.raises(GraphQLError):
        documents.parse(document, max_tokens=MAX_TOKENS)
    assert len(documents) == 0


def test_the_fan_out_parses_through_the_schemas_one_cache() -> None:
    """Given the schema's parse cache, when the fan-out asks whether a subscription
    resumes, then the document it parsed is the one the cache hands to the operation."""
    # given
    documents = documents_of(schema)
    assert documents is not None
    text = "subscription { messageAdded(after: null) { id } }  # fan-out parse cache test"

    # when
    shared = resumes(text, None, documents)

    # then
    known = documents.get(text)
    assert not shared
    assert known is not None
    assert documents.parse(text).document is known.document
