"""A client's mistakes get a clear, coded answer: never INTERNAL_SERVER_ERROR, never a
traceback in the logs, and never a "Did you mean" that hands out the schema."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor

sqlite_only = pytest.mark.parametrize("dialect", ["sqlite"])

AUDIT = "query($first: Int) { auditEvents(first: $first) { edges { cursor } } }"
BY_STATUS = (
    "query($status: ConversationStatus) { conversations(status: $status) { edges { cursor } } }"
)
UPDATE_CONTACT = "mutation($input: UpdateContactInput!) { updateContact(input: $input) { id } }"
REQUIRED = "query($first: Int!) { auditEvents(first: $first) { edges { cursor } } }"


@contextmanager
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing at ERROR, and no traceback at any level, inside the block."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        yield
    loud = [
        (record.name, record.getMessage())
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]
    assert loud == [], loud


def post(client: httpx.AsyncClient, token: str, body: bytes) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return client.post("/graphql", content=body, headers=headers)


# --- item 14: coded answers ----------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (AUDIT, {"first": "ten"}),  # not an Int
        (AUDIT, {"first": 1.5}),
        (BY_STATUS, {"status": "OPN"}),  # not a value of the enum
        (UPDATE_CONTACT, {"input": {"id": "x", "nam": "typo"}}),  # an unknown input field
        (UPDATE_CONTACT, {"input": {"name": "no id"}}),  # a required input field missing
        (REQUIRED, {}),  # a required variable missing
        (REQUIRED, {"first": None}),
    ],
)
async def test_a_variable_of_the_wrong_type_is_bad_user_input(
    client: httpx.AsyncClient,
    admin: Actor,
    caplog: pytest.LogCaptureFixture,
    query: str,
    variables: dict[str, Any],
) -> None:
    token = await token_for(client, admin)
    with no_error_logs(caplog):
        response = await gql(client, token, query, variables)
    assert response.status_code == 200
    assert response.json()["data"] is None
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert "Variable '$" in response.json()["errors"][0]["message"]


@sqlite_only
@pytest.mark.parametrize(
    "query",
    [
        "query($unused: String) { viewer { id } }",  # a variable defined, never used
        "query($id: ID!, $unused: Int) { node(id: $id) { id } }",
        "query($member: Member) { viewer { id } }",  # not an input type (and unused)
    ],
)
async def test_a_variable_the_document_gets_wrong_is_a_validation_error(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    """Given a document whose variable definitions break validation (whatever the values)
    when it is posted
    then GRAPHQL_VALIDATION_FAILED like any invalid document, not BAD_USER_INPUT, which
    is for a value that does not fit its variable's type."""
    token = await token_for(client, admin)
    with no_error_logs(caplog):
        response = await gql(client, token, query, {"id": "x"})
    assert response.status_code == 200
    assert response.json()["data"] is None
    assert set(error_codes(response)) == {"GRAPHQL_VALIDATION_FAILED"}


@sqlite_only
@pytest.mark.parametrize(
    "query",
    [
        "{ auditEvents(first: %s) { edges { cursor } } }" % ("9" * 5000),
        "{ auditEvents(first: -%s) { edges { cursor } } }" % ("1" * 5000),
    ],
    ids=["thousands-of-digits", "negative"],
)
async def test_an_int_literal_too_long_to_convert_is_a_validation_error(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    """Given an Int literal of more digits than Python converts (4300; graphql-core's
    check of the literal raises a ValueError),
    when it is sent,
    then GRAPHQL_VALIDATION_FAILED like any invalid literal, not a masked internal error
    logged as our fault."""
    token = await token_for(client, admin)
    with no_error_logs(caplog):
        response = await gql(client, token, query)
    assert response.json()["data"] is None
    assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]


@sqlite_only
@pytest.mark.parametrize(
    "body",
    [
        b'"{ viewer { id } }"',  # a JSON string
        b"42",
        b"null",
        b"true",
        '{"query": "{ viewer { id } }", "note": "caf\xe9"}'.encode("latin-1"),  # not UTF-8
        json.dumps({"query": "{ viewer { id } }"}).encode("utf-16"),
        b"\xff\xfe\x00",
    ],
)
async def test_a_body_that_is_not_a_json_object_in_utf8_is_400(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    token = await token_for(client, admin)
    with no_error_logs(caplog):
        response = await post(client, token, body)
    assert response.status_code == 400
    assert response.headers["Cache-Control"] == "no-store"
    assert error_codes(response) == ["BAD_REQUEST"]
    assert '"viewer"' not in response.text


@sqlite_only
async def test_other_malformed_requests_are_400_in_the_graphql_shape(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_for(client, admin)
    # Nested deeper than the JSON parser's stack (but within the 256 KiB cap)
    nested = b'{"query": "{ viewer { id } }", "variables": ' + b'{"a": ' * 20_000 + b"1"
    nested += b"}" * 20_001
    for body in (
        b"{",
        b"{}",
        b'{"query": 1}',
        b'{"query": "{ viewer { id } }", "variables": 1}',
        nested,
    ):
        with no_error_logs(caplog):
            response = await post(client, token, body)
        assert response.status_code == 400, body
        assert error_codes(response) == ["BAD_REQUEST"], body


@sqlite_only
async def test_a_subscription_sent_over_http_is_refused_with_a_clear_message(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Apollo's plain HttpLink, which POSTs subscriptions like any operation
    token = await token_for(client, admin)
    with no_error_logs(caplog):
        response = await gql(client, token, "subscription { conversationUpdated { id } }")
    # Then it is told where subscriptions go
    assert response.status_code == 400
    assert error_codes(response) == ["BAD_REQUEST"]
    message = response.json()["errors"][0]["message"]
    assert "WebSocket" in message
    assert "graphql-transport-ws" in message


# --- item 15: no suggestions ---------------------------------------------------------

# (document, variables, what a suggestion would have given away)
SUGGESTION_BAIT = {
    "field": ("{ viewer { rol } }", None, "role"),
    "argument": ("{ conversations(frist: 2) { edges { cursor } } }", None, "first"),
    "type": (
        "query($s: ConversationStatu) { conversations(status: $s) { edges { cursor } } }",
        None,
        "ConversationStatus",
    ),
    "input field": (
        'mutation { updateContact(input: {id: "x", nam: "y"}) { id } }',
        None,
        "'name'",
    ),
    "input field (variable)": (UPDATE_CONTACT, {"input": {"id": "x", "nam": "y"}}, "'name'"),
    "enum value": ("{ conversations(status: OPN) { edges { cursor } } }", None, "OPEN"),
    "enum value (variable)": (BY_STATUS, {"status": "OPN"}, "OPEN"),
    "directive argument": (
        "{ viewer @include(iff: true) { id } }",
        None,
        "'if'",
    ),
}


@sqlite_only
@pytest.mark.parametrize("kind", list(SUGGESTION_BAIT))
async def test_no_suggestion_is_given_with_introspection_off(
    make_client: ClientFactory, admin: Actor, kind: str
) -> None:
    document, variables, secret = SUGGESTION_BAIT[kind]
    # Given introspection off (so the schema may only leak through errors)
    async with make_client(graphql_introspection=False) as client:
        token = await token_for(client, admin)
        # When a schema-recovery tool sends a near miss
        response = await gql(client, token, document, variables)
    # Then it is refused without a hint of the right name
    assert response.json()["data"] is None
    assert set(error_codes(response)) <= {"GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"}
    assert "Did you mean" not in response.text
    assert secret not in response.text


NUL_CASES = {
    "literal": ('{ contacts(search: "a\\u0000b") { edges { cursor } } }', None),
    "variable": (
        "query($s: String) { conversations(search: $s) { edges { cursor } } }",
        {"s": "a\u0000b"},
    ),
    "input field": (
        "mutation($input: CreateLabelInput!) { createLabel(input: $input) { id } }",
        {"input": {"name": "a\u0000", "color": "#aabbcc"}},
    ),
    "list item": (
        "mutation($input: SetConversationLabelsInput!) {"
        " setConversationLabels(input: $input) { id } }",
        {"input": {"conversationId": "x", "labelIds": ["\u0000"]}},
    ),
    # Deeper than a recursive walk of the variables could follow (900 lists, a JSON
    # body the parser still takes): refused as any other NUL, not a masked 500.
    "deeply nested variable": (
        "query($s: String) { conversations(search: $s) { edges { cursor } } }",
        {"s": "a", "deep": json.loads("[" * 900 + '"\\u0000"' + "]" * 900)},
    ),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
async def test_text_holding_nul_is_bad_user_input_on_both_engines(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """PostgreSQL cannot take U+0000 in a text parameter; SQLite cuts a pattern at it."""
    document, variables = NUL_CASES[case]
    token = await token_for(client, admin)
    # When a client sends a NUL character in a literal or a variable
    with no_error_logs(caplog):
        response = await gql(client, token, document, variables)
    # Then it is refused as the client's fault before anything runs, on either engine
    assert response.status_code == 200
    assert response.json()["data"] is None
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert "U+0000" in response.json()["errors"][0]["message"]
    labels = await gql(client, token, "{ labels { id } }")
    assert labels.json()["data"] == {"labels": []}
