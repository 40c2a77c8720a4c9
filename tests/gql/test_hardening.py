"""`/graphql` under attack: limits, transport rules, masking, headers, CORS, IDE, sockets."""

from __future__ import annotations

import asyncio
import gc
import json
import types
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.fixtures.api import error_codes, gql, tokens_for, without_cost
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor
from weflux.api.security import IDE_CSP
from weflux.config import Settings
from weflux.gql.view import MULTIPART_SHAPE
from weflux.services import members as member_service

# Transport and limit checks do not depend on the database: SQLite is enough. Tests
# that authenticate over a real socket run on both dialects.
sqlite_only = pytest.mark.parametrize("dialect", ["sqlite"])

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
NOT_EXECUTED_MARKERS = ('"viewer"', '"data"')


@pytest.fixture
async def token(client: httpx.AsyncClient, admin: Actor) -> str:
    return str((await tokens_for(client, admin))["accessToken"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def messages(response: httpx.Response) -> list[str]:
    return [e["message"] for e in response.json().get("errors", [])]


def refused(response: httpx.Response) -> None:
    """The operation was not executed: errors, no data."""
    body = response.json()
    assert body.get("errors"), body
    assert body.get("data") is None, body


# --- query limits --------------------------------------------------------------------


def nested(depth: int) -> str:
    """`{ viewer { user { a { a { ... } } } } }` reaching `depth` levels."""
    inner = "id"
    for _ in range(depth - 2):
        inner = f"a {{ {inner} }}"
    return f"{{ viewer {{ user {{ {inner} }} }} }}"


@sqlite_only
async def test_a_query_deeper_than_10_is_rejected(client: httpx.AsyncClient, token: str) -> None:
    # Given the deepest query the schema allows, it runs
    deepest = "{ auditEvents { edges { node { actor { organization { id } } } } } }"
    assert "errors" not in (await gql(client, token, deepest)).json()
    # When a query nests deeper than 10
    response = await gql(client, token, nested(12))
    # Then it is rejected by the depth limit, unexecuted
    refused(response)
    assert any("exceeds maximum operation depth of 10" in m for m in messages(response))


@sqlite_only
async def test_a_deep_introspection_query_is_rejected(
    client: httpx.AsyncClient, token: str
) -> None:
    # Given introspection, exempt from the depth limit, and its fan-out
    inner = "name"
    for _ in range(6):
        inner = f"fields {{ type {{ ofType {{ ofType {{ {inner} }} }} }} }}"
    # When an authenticated caller nests `fields` to amplify the answer
    response = await gql(client, token, f"{{ __schema {{ types {{ {inner} }} }} }}")
    # Then the introspection depth rule refuses it
    refused(response)
    assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]


@sqlite_only
async def test_more_than_15_aliases_are_rejected(client: httpx.AsyncClient, token: str) -> None:
    def aliased(count: int) -> str:
        return "{ " + " ".join(f"a{i}: viewer {{ id }}" for i in range(count)) + " }"

    # Given 15 aliases are fine
    assert "errors" not in (await gql(client, token, aliased(15))).json()
    # When a query has 16
    response = await gql(client, token, aliased(16))
    # Then it is rejected, unexecuted
    refused(response)
    assert any("aliases" in m for m in messages(response))


@sqlite_only
async def test_more_than_2000_tokens_are_rejected(client: httpx.AsyncClient, token: str) -> None:
    # Given a document of more than 2,000 tokens (6 + 2,100)
    query = "{ viewer { " + " ".join(["id"] * 2100) + " } }"
    # When it is sent
    response = await gql(client, token, query)
    # Then parsing stops at the limit, nothing runs
    refused(response)
    assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]
    assert any("2000 tokens" in m for m in messages(response))


@sqlite_only
@pytest.mark.parametrize("first", [101, 1000, 0, -1])
async def test_audit_page_size_out_of_range_is_bad_user_input(
    client: httpx.AsyncClient, token: str, first: int
) -> None:
    query = "query ($first: Int) { auditEvents(first: $first) { edges { cursor } } }"
    response = await gql(client, token, query, {"first": first})
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert response.json()["data"] is None
    ok = await gql(client, token, query, {"first": 100})
    assert "errors" not in ok.json()


@sqlite_only
async def test_field_suggestions_are_not_given(client: httpx.AsyncClient, token: str) -> None:
    for query in ("{ viewr { id } }", "{ viewer { rol } }", "{ sesions { id } }"):
        response = await gql(client, token, query)
        refused(response)
        assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]
        assert "Did you mean" not in response.text


# --- transport ---------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    "body",
    [
        b'[{"query": "{ viewer { id } }"}]',
        b'  \n [{"query": "{ viewer { id } }"}, {"query": "{ members { id } }"}]',
        b"[]",
        b'\xef\xbb\xbf[{"query": "{ viewer { id } }"}]',  # behind a UTF-8 BOM
    ],
)
async def test_a_batch_is_refused_with_400(
    client: httpx.AsyncClient, token: str, body: bytes
) -> None:
    headers = {**auth(token), "Content-Type": "application/json"}
    response = await client.post("/graphql", content=body, headers=headers)
    assert response.status_code == 400
    assert '"viewer"' not in response.text
    assert response.headers["Cache-Control"] == "no-store"


@sqlite_only
async def test_get_with_a_query_is_never_executed(client: httpx.AsyncClient, token: str) -> None:
    params = {"query": "{ viewer { id user { email } } }"}
    # Without a token: 401
    anonymous = await client.get("/graphql", params=params)
    assert anonymous.status_code == 401
    # With a token: refused too, no data
    authenticated = await client.get("/graphql", params=params, headers=auth(token))
    assert authenticated.status_code != 200
    assert authenticated.status_code == 405
    assert "admin@acme.example" not in authenticated.text
    assert '"data"' not in authenticated.text


@sqlite_only
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # a "simple" CORS request: the classic CSRF vector
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/jsonp",
        "application/json-seq",
        None,
    ],
)
async def test_a_body_that_is_not_json_gets_415(
    client: httpx.AsyncClient, token: str, content_type: str | None
) -> None:
    headers = auth(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps({"query": "{ viewer { id } }"}).encode()
    response = await client.post("/graphql", content=body, headers=headers)
    assert response.status_code == 415
    assert '"viewer"' not in response.text


@sqlite_only
async def test_a_malformed_multipart_body_gets_400_and_no_data(
    client: httpx.AsyncClient, token: str
) -> None:
    """Given multipart/form-data (accepted for uploadMedia, behind the Bearer token),
    when the body is not a multipart body at all,
    then the answer is 400 with no data."""
    headers = {**auth(token), "Content-Type": "multipart/form-data; boundary=x"}
    body = json.dumps({"query": "{ viewer { id } }"}).encode()
    response = await client.post("/graphql", content=body, headers=headers)
    assert response.status_code == 400
    assert '"viewer"' not in response.text


UPLOAD = "mutation($file: Upload!) { uploadMedia(file: $file) { id } }"
UPLOAD_OPERATIONS = json.dumps({"query": UPLOAD, "variables": {"file": None}})
NESTED_JSON = "[" * 100_000 + "]" * 100_000


@sqlite_only
@pytest.mark.parametrize(
    ("operations", "mapping"),
    [
        (UPLOAD_OPERATIONS, {"0": ["query.x"]}),  # a path into a string
        (json.dumps({"query": UPLOAD, "variables": {"file": [None]}}), {"0": ["variables.file.x"]}),
        (json.dumps({"query": UPLOAD, "variables": {"file": []}}), {"0": ["variables.file.5"]}),
        (UPLOAD_OPERATIONS, ["variables.file"]),  # a map that is not an object
        (UPLOAD_OPERATIONS, {"0": 5}),  # paths that are not a list
        ('"a string"', {"0": ["variables.file"]}),  # operations that are not an object
        ("5", {}),
        (NESTED_JSON, {}),  # nested past the JSON parser's stack
        (UPLOAD_OPERATIONS, NESTED_JSON),
    ],
    ids=[
        "path-into-a-string",
        "path-index-not-a-number",
        "path-index-out-of-range",
        "map-a-list",
        "map-paths-not-a-list",
        "operations-a-string",
        "operations-a-number",
        "operations-nested",
        "map-nested",
    ],
)
async def test_a_multipart_request_of_the_wrong_shape_gets_400_and_no_data(
    client: httpx.AsyncClient, token: str, operations: str, mapping: object
) -> None:
    """Given an upload as a multipart request whose `operations` or `map` is JSON of the
    wrong shape (the GraphQL multipart request spec: an object, and an object of lists of
    paths to null variables),
    when it is posted,
    then the answer is 400 BAD_REQUEST in the GraphQL error shape, and nothing runs."""
    response = await client.post(
        "/graphql",
        headers=auth(token),
        data={
            "operations": operations,
            "map": mapping if isinstance(mapping, str) else json.dumps(mapping),
        },
        files={"0": ("a.txt", b"hello", "text/plain")},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    refused(response)


@sqlite_only
@pytest.mark.parametrize(
    ("operations", "mapping", "named"),
    [
        (UPLOAD_OPERATIONS, {"0": ["variables.upload"]}, '"0": "variables.upload"'),
        (json.dumps({"query": UPLOAD}), {"0": ["variables.file"]}, '"0": "variables.file"'),
        (UPLOAD_OPERATIONS, {"1": ["variables.file"]}, '"1"'),
    ],
    ids=["path-to-no-variable", "path-through-nothing", "no-such-file-part"],
)
async def test_a_map_entry_that_points_at_nothing_gets_400_naming_it(
    client: httpx.AsyncClient, token: str, operations: str, mapping: object, named: str
) -> None:
    """Given an upload whose `map` names a path that is not in `operations` (a variable
    the operation does not have), or a file part the request does not carry,
    when it is posted,
    then the answer is 400 BAD_REQUEST whose message names the map's entry at fault,
    not a library's wording about None, and nothing runs."""
    response = await client.post(
        "/graphql",
        headers=auth(token),
        data={"operations": operations, "map": json.dumps(mapping)},
        files={"0": ("a.txt", b"hello", "text/plain")},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    [message] = messages(response)
    assert f"`map` entry {named}" in message, message
    refused(response)


@sqlite_only
@pytest.mark.parametrize(
    ("operations", "mapping", "named"),
    [
        (
            json.dumps({"query": UPLOAD, "variables": {"file": None}, "operationName": None}),
            {"0": ["variables.file", "operationName"]},
            '`map` entry "0": "operationName"',
        ),
        (
            json.dumps({"query": UPLOAD, "variables": {"file": None}, "other": None}),
            {"0": ["variables.file", "other"]},
            '`map` entry "0": "other"',
        ),
        (
            json.dumps({"query": UPLOAD, "variables": None}),
            {"0": ["variables"]},
            '`map` entry "0": "variables"',
        ),
        (
            UPLOAD_OPERATIONS,
            {"0": ["variables.file"], "1": ["variables.file"]},
            '`map` entries "0" and "1" both put a file at "variables.file"',
        ),
        (UPLOAD_OPERATIONS, {"0" * 100_000: ["variables.file"]}, '`map` entry "' + "0" * 78 + "… "),
    ],
    ids=[
        "path-to-operation-name",
        "path-outside-variables",
        "path-to-variables",
        "two-files-one-path",
        "long-name",
    ],
)
async def test_a_map_entry_outside_the_variables_or_onto_another_s_path_gets_400(
    client: httpx.AsyncClient, token: str, operations: str, mapping: object, named: str
) -> None:
    """Given an upload whose `map` puts a file outside the operation's variables (its
    `operationName`, a key of `operations` the server ignores, the variables object
    itself), or two files at one path, or whose entry is named by a 100,000-character
    name,
    when it is posted,
    then the answer is 400 BAD_REQUEST naming the entry, at most 80 characters of it, and
    nothing runs (before: the file was stored with one of the two files silently dropped,
    or the operation failed quoting the file part's headers, or the name came back
    whole)."""
    response = await client.post(
        "/graphql",
        headers=auth(token),
        data={"operations": operations, "map": json.dumps(mapping)},
        files={"0": ("a.txt", b"hello", "text/plain"), "1": ("b.txt", b"bye", "text/plain")},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    [message] = messages(response)
    assert named in message, message
    assert len(message) < 400, len(message)
    refused(response)


@sqlite_only
@pytest.mark.parametrize("part", ["0", "operations"])
async def test_a_part_sent_twice_gets_400_naming_it(
    client: httpx.AsyncClient, token: str, part: str
) -> None:
    """Given an upload whose multipart body carries two parts of one name (two files
    "0", or two `operations`),
    when it is posted,
    then the answer is 400 BAD_REQUEST naming the part, and nothing runs: before, the
    last one was used and the other silently left out."""
    second: dict[str, Any] = {
        "0": ("0", ("b.txt", b"bye", "text/plain")),
        "operations": ("operations", (None, UPLOAD_OPERATIONS)),
    }
    response = await client.post(
        "/graphql",
        headers=auth(token),
        files=[
            ("operations", (None, UPLOAD_OPERATIONS)),
            ("map", (None, json.dumps({"0": ["variables.file"]}))),
            ("0", ("a.txt", b"hello", "text/plain")),
            second[part],
        ],
    )
    assert response.status_code == 400, response.text
    assert messages(response) == [f'The part "{part}" is sent twice: one part a name']
    refused(response)


@sqlite_only
async def test_one_file_at_several_paths_is_uploaded(client: httpx.AsyncClient, token: str) -> None:
    """Given an upload whose `map` lists one file at a path twice (the spec lets one file
    fill several places),
    when it is posted,
    then the file is stored."""
    response = await client.post(
        "/graphql",
        headers=auth(token),
        data={"operations": UPLOAD_OPERATIONS, "map": json.dumps({"0": ["variables.file"] * 2})},
        files={"0": ("a.txt", b"hello", "text/plain")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["uploadMedia"]["id"], response.text


@sqlite_only
@pytest.mark.parametrize("part", ["operations", "map"])
async def test_an_upload_without_its_operations_or_its_map_gets_400(
    client: httpx.AsyncClient, token: str, part: str
) -> None:
    """Given an upload as a multipart request that lacks its `operations` or its `map` part,
    when it is posted,
    then the answer is 400 BAD_REQUEST saying what a multipart request needs, and nothing
    runs (without `map` the file was left out and the variable was null)."""
    parts = {"operations": UPLOAD_OPERATIONS, "map": json.dumps({"0": ["variables.file"]})}
    del parts[part]
    response = await client.post(
        "/graphql",
        headers=auth(token),
        data=parts,
        files={"0": ("a.txt", b"hello", "text/plain")},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert messages(response) == [MULTIPART_SHAPE]
    refused(response)


@sqlite_only
async def test_application_json_with_a_charset_is_fine(
    client: httpx.AsyncClient, token: str
) -> None:
    headers = {**auth(token), "Content-Type": "application/json; charset=utf-8"}
    body = json.dumps({"query": "{ viewer { role } }"}).encode()
    response = await client.post("/graphql", content=body, headers=headers)
    assert without_cost(response.json()) == {"data": {"viewer": {"role": "ADMIN"}}}


@sqlite_only
async def test_a_body_over_the_limit_gets_413(
    client: httpx.AsyncClient, token: str, settings: Settings
) -> None:
    limit = settings.graphql_max_body_bytes
    payload = json.dumps({"query": "{ viewer { id } }", "variables": {"pad": "x" * limit}})
    headers = {**auth(token), "Content-Type": "application/json"}
    # Declared up front
    declared = await client.post("/graphql", content=payload.encode(), headers=headers)
    assert declared.status_code == 413
    assert declared.headers["Cache-Control"] == "no-store"

    # Streamed without a Content-Length (chunked): cut off all the same
    async def chunks() -> AsyncIterator[bytes]:
        data = payload.encode()
        for start in range(0, len(data), 16_384):
            yield data[start : start + 16_384]

    streamed = await client.post("/graphql", content=chunks(), headers=headers)
    assert streamed.status_code == 413


# --- introspection -------------------------------------------------------------------------

INTROSPECTION = "{ __schema { queryType { name } } }"


@sqlite_only
async def test_introspection_works_for_an_authenticated_caller(
    client: httpx.AsyncClient, token: str
) -> None:
    response = await gql(client, token, INTROSPECTION)
    assert without_cost(response.json()) == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


@sqlite_only
async def test_introspection_is_impossible_unauthenticated(client: httpx.AsyncClient) -> None:
    response = await gql(client, None, INTROSPECTION)
    assert response.status_code == 401
    assert "__schema" not in response.text
    assert "Query" not in response.text


@sqlite_only
async def test_introspection_can_be_turned_off_entirely(
    make_client: ClientFactory, admin: Actor
) -> None:
    async with make_client(graphql_introspection=False) as client:
        token = (await tokens_for(client, admin))["accessToken"]
        for query in (INTROSPECTION, '{ __type(name: "Member") { fields { name } } }'):
            response = await gql(client, token, query)
            refused(response)
            assert set(error_codes(response)) == {"GRAPHQL_VALIDATION_FAILED"}
            assert any("introspection has been disabled" in m for m in messages(response))
        # The API itself still works
        assert "errors" not in (await gql(client, token, "{ viewer { id } }")).json()


# --- errors ------------------------------------------------------------------------------

LEAKS = ("secret", "/etc/passwd", "SELECT", "Traceback", "RuntimeError", "members.py")


@sqlite_only
async def test_an_unexpected_exception_is_masked(
    client: httpx.AsyncClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a resolver that blows up with internals in its message
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret /etc/passwd SELECT * FROM users")

    monkeypatch.setattr(member_service, "members", boom)
    # When it is queried
    response = await gql(client, token, "{ members { id } }")
    # Then the client learns nothing but that it failed
    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert error["message"] == "Internal server error"
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    for leak in LEAKS:
        assert leak not in response.text


@sqlite_only
async def test_coded_errors_pass_through(
    client: httpx.AsyncClient, token: str, agent: Actor
) -> None:
    # NOT_FOUND from a service
    missing = await gql(client, token, 'query { node(id: "bm9wZQ") { id } }')
    [error] = missing.json()["errors"]
    assert error["extensions"] == {"code": "NOT_FOUND"}
    assert error["message"] == "Not found"
    # FORBIDDEN from a permission class
    agent_token = (await tokens_for(client, agent))["accessToken"]
    forbidden = await gql(client, agent_token, "{ auditEvents { edges { cursor } } }")
    [error] = forbidden.json()["errors"]
    assert error["extensions"] == {"code": "FORBIDDEN"}
    assert error["message"] != "Internal server error"
    # FORBIDDEN from a service
    invite = """mutation { inviteMember(input: {email: "m@acme.example", name: "M",
                role: ADMIN}) { token } }"""
    manager_refusal = await gql(client, agent_token, invite)
    assert error_codes(manager_refusal) == ["FORBIDDEN"]


# --- headers -------------------------------------------------------------------------------


def assert_graphql_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers.get("cache-control") == "no-store", response.status_code
    assert headers.get_list("content-security-policy") == [API_CSP]
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"
    assert "camera=()" in headers.get("permissions-policy", "")
    assert "strict-transport-security" not in headers  # plain http, test env


@sqlite_only
async def test_every_graphql_response_carries_no_store_and_security_headers(
    client: httpx.AsyncClient, token: str, agent: Actor
) -> None:
    json_headers = {**auth(token), "Content-Type": "application/json"}
    agent_token = (await tokens_for(client, agent))["accessToken"]
    responses = {
        "ok": await gql(client, token, "{ viewer { id } }"),
        "graphql error": await gql(client, agent_token, "{ auditEvents { edges { cursor } } }"),
        "validation error": await gql(client, token, "{ viewr { id } }"),
        "401": await gql(client, None, "{ viewer { id } }"),
        "401 bad token": await gql(client, "nope", "{ viewer { id } }"),
        "400 batch": await client.post("/graphql", content=b"[]", headers=json_headers),
        "400 not json": await client.post("/graphql", content=b"{", headers=json_headers),
        "405 get": await client.get("/graphql", headers=auth(token)),
        "413": await client.post("/graphql", content=b" " * 300_000 + b"{}", headers=json_headers),
        "415": await client.post("/graphql", content=b"{}", headers=auth(token)),
    }
    expected_status = {"401": 401, "401 bad token": 401, "405 get": 405, "413": 413, "415": 415}
    for name, response in responses.items():
        assert response.status_code == expected_status.get(name, response.status_code), name
        assert response.status_code < 500, (name, response.text)
        try:
            assert_graphql_headers(response)
        except AssertionError as error:
            raise AssertionError(f"{name}: {dict(response.headers)}") from error


@sqlite_only
async def test_hsts_only_over_https(make_client: ClientFactory, admin: Actor) -> None:
    async with make_client(base_url="http://testserver") as client:
        token = (await tokens_for(client, admin))["accessToken"]
        plain = await gql(client, token, "{ viewer { id } }")
        assert "strict-transport-security" not in plain.headers
    async with make_client(base_url="https://testserver") as client:
        token = (await tokens_for(client, admin))["accessToken"]
        secure = await gql(client, token, "{ viewer { id } }")
        assert secure.headers["strict-transport-security"] == HSTS
        assert (await gql(client, None, "{ viewer { id } }")).headers[
            "strict-transport-security"
        ] == HSTS


# --- CORS ----------------------------------------------------------------------------------

FRONTEND = "http://localhost:5173"


@sqlite_only
async def test_cors_preflight_from_the_configured_origin_only(
    make_client: ClientFactory, admin: Actor
) -> None:
    async with make_client(allowed_origins=[FRONTEND]) as client:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        # From the frontend: allowed, without credentials
        ok = await client.options("/graphql", headers={"Origin": FRONTEND, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == FRONTEND
        assert "access-control-allow-credentials" not in ok.headers
        # From anywhere else: not allowed
        for origin in ("https://evil.example", "http://localhost:5173.evil.example", "null"):
            evil = await client.options("/graphql", headers={"Origin": origin, **preflight})
            assert evil.status_code == 400
            assert "access-control-allow-origin" not in evil.headers
        # And an actual cross-origin POST from evil is answered without CORS consent
        token = (await tokens_for(client, admin))["accessToken"]
        response = await client.post(
            "/graphql",
            json={"query": "{ viewer { id } }"},
            headers={**auth(token), "Origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in response.headers


# --- GraphiQL --------------------------------------------------------------------------------


@sqlite_only
async def test_graphiql_is_served_with_its_own_policy_only_when_enabled(
    make_client: ClientFactory, client: httpx.AsyncClient
) -> None:
    html = {"Accept": "text/html"}
    # Default test settings: no IDE
    off = await client.get("/graphql", headers=html)
    assert off.status_code == 401
    assert "graphiql" not in off.text.lower()
    # Enabled: the page, with its own CSP (and no data)
    async with make_client(graphql_ide=True) as ide_client:
        page = await ide_client.get("/graphql", headers=html)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()
        assert page.headers.get_list("content-security-policy") == [IDE_CSP]
        assert page.headers["x-content-type-options"] == "nosniff"
        # The IDE changes nothing for queries: still no token, no answer
        anonymous = await gql(ide_client, None, "{ viewer { id } }")
        assert anonymous.status_code == 401
        sneaky = await ide_client.get(
            "/graphql", params={"query": "{ viewer { id } }"}, headers=html
        )
        assert '"data"' not in sneaky.text


# --- WebSocket: connection_init -------------------------------------------------------------


@dataclass
class LiveServer:
    http: httpx.AsyncClient
    ws_url: str


@pytest.fixture
def live(live: str, http: httpx.AsyncClient) -> LiveServer:
    """The app under a real uvicorn (tests.fixtures.live): its client and its socket's URL."""
    return LiveServer(http=http, ws_url=live.replace("http://", "ws://") + "/graphql")


TRANSPORT_WS = Subprotocol("graphql-transport-ws")


async def _init(ws: ClientConnection, payload: Any) -> dict[str, Any] | int:
    """Send connection_init; the server's reply, or the close code."""
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = payload
    try:
        await ws.send(json.dumps(message))
        async with asyncio.timeout(5):
            reply: dict[str, Any] = json.loads(await ws.recv())
            return reply
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else -1


async def test_connection_init_with_a_valid_token_is_acknowledged(
    live: LiveServer, admin: Actor
) -> None:
    # Given an access token
    token = (await tokens_for(live.http, admin))["accessToken"]
    # When a socket speaks graphql-transport-ws and sends it in connection_init
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
        reply = await _init(ws, {"authorization": f"Bearer {token}"})
        # Then the connection is acknowledged
        assert isinstance(reply, dict)
        assert reply["type"] == "connection_ack"
        assert not reply.get("payload")


def _holding(marker: str) -> list[str]:
    """What in this process (the live server's too) still holds a string with `marker`:
    a dict's value, or a local of a suspended generator or coroutine. The objects and
    the values are judged by `type`, which never dereferences a weak proxy (`isinstance`
    raises on a dead one: a dict may hold one as a value)."""
    held: list[str] = []
    frames = {
        types.GeneratorType: "gi_frame",
        types.AsyncGeneratorType: "ag_frame",
        types.CoroutineType: "cr_frame",
    }
    for thing in gc.get_objects():
        kind = type(thing)
        if issubclass(kind, dict):
            values: Any = thing.values()
        elif kind in frames:
            frame = getattr(thing, frames[kind])
            values = frame.f_locals.values() if frame is not None else ()
        else:
            continue
        held += [
            kind.__name__
            for value in values
            if issubclass(type(value), str) and marker in value  # a dead weak proxy: not a str
        ]
    return held


@sqlite_only
async def test_an_idle_socket_keeps_nothing_of_its_connection_init_but_the_token(
    live: LiveServer, admin: Actor
) -> None:
    """Given a socket acknowledged with 60 KB more than its token in connection_init
    When it stays idle
    Then the server holds no copy of the extra (the decoded frame, its text, the params):
    one account's idle sockets held three copies each of up to 64 KiB."""
    token = (await tokens_for(live.http, admin))["accessToken"]
    marker = uuid.uuid4()  # no str of it in this test's locals, which `_holding` reads too
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS], max_size=None) as ws:
        padding = {"padding": marker.hex + "x" * 60_000}
        reply = await _init(ws, {"authorization": f"Bearer {token}", **padding})
        del padding
        assert isinstance(reply, dict)
        assert reply["type"] == "connection_ack"
        for _ in range(100):  # the handler finishes the init after the ack went out
            held = _holding(marker.hex)
            if not held:
                break
            await asyncio.sleep(0.05)
        assert held == []


@pytest.mark.parametrize(
    ("dialect", "case"),
    [
        ("postgresql", "revoked"),
        *[
            ("sqlite", case)
            for case in (
                "no payload",
                "empty payload",
                "no token",
                "bad token",
                "refresh token",
                "revoked",
            )
        ],
    ],
)
async def test_connection_init_without_a_valid_token_closes_4403(
    live: LiveServer, admin: Actor, case: str
) -> None:
    pair = await tokens_for(live.http, admin)
    if case == "revoked":
        logout = await live.http.post("/auth/logout", headers=auth(pair["accessToken"]))
        assert logout.status_code == 204
    payload: Any = {
        "no payload": None,
        "empty payload": {},
        "no token": {"authorization": "Bearer "},
        "bad token": {"authorization": "Bearer not.a.token"},
        "refresh token": {"authorization": f"Bearer {pair['refreshToken']}"},
        "revoked": {"authorization": f"Bearer {pair['accessToken']}"},
    }[case]
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        assert await _init(ws, payload) == 4403


@sqlite_only
async def test_subscribing_before_connection_init_is_refused(live: LiveServer) -> None:
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        await ws.send(
            json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


VIEWER = {"query": "{ viewer { id } }"}


@sqlite_only
@pytest.mark.parametrize(
    "frame",
    [
        {"id": 1, "type": "subscribe", "payload": VIEWER},  # ran past the request limits
        {"id": ["1"], "type": "subscribe", "payload": VIEWER},
        {"id": "1", "type": "subscribe", "payload": "{ viewer { id } }"},
        {"id": "1", "type": "subscribe", "payload": {"query": 1}},
        {"id": "1", "type": "subscribe", "payload": {**VIEWER, "variables": [1]}},
        {"id": "1", "type": "subscribe", "payload": {**VIEWER, "operationName": 1}},
        {"id": ["1"], "type": "complete"},
        ["subscribe"],
    ],
    ids=[
        "id-a-number",
        "id-a-list",
        "payload-a-string",
        "query-a-number",
        "variables-a-list",
        "operation-name-a-number",
        "complete-id-a-list",
        "frame-a-list",
    ],
)
async def test_a_frame_of_the_wrong_shape_closes_the_socket_4400(
    live: LiveServer, admin: Actor, frame: Any
) -> None:
    """Given an acknowledged socket,
    when it sends a frame graphql-transport-ws does not allow (an operation id that is not
    a string, a subscribe payload that is not {query: string, variables: object, ...}),
    then the socket closes 4400 (the protocol's "invalid message") and nothing ran."""
    token = (await tokens_for(live.http, admin))["accessToken"]
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        reply = await _init(ws, {"authorization": f"Bearer {token}"})
        assert isinstance(reply, dict)
        assert reply["type"] == "connection_ack"
        await ws.send(json.dumps(frame))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400


@sqlite_only
async def test_a_frame_nested_past_the_json_parsers_stack_closes_the_socket_4400(
    live: LiveServer, admin: Actor
) -> None:
    """Given an acknowledged socket, when a frame nests arrays 5,000 deep (valid JSON the
    parser cannot follow), then the socket closes 4400 like any malformed frame, not
    dropped without a close frame by an exception."""
    token = (await tokens_for(live.http, admin))["accessToken"]
    async with connect(live.ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        reply = await _init(ws, {"authorization": f"Bearer {token}"})
        assert isinstance(reply, dict)
        assert reply["type"] == "connection_ack"
        deep = "[" * 5000 + "]" * 5000
        await ws.send(
            '{"id": "1", "type": "subscribe", "payload": {"query": "{ viewer { id } }",'
            f' "variables": {{"a": {deep}}}}}}}'
        )
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400


@sqlite_only
async def test_the_legacy_graphql_ws_subprotocol_is_not_accepted(
    live: LiveServer, admin: Actor
) -> None:
    # Given a valid token
    token = (await tokens_for(live.http, admin))["accessToken"]
    # When a client asks for the legacy `graphql-ws` subprotocol only
    async with connect(live.ws_url, subprotocols=[Subprotocol("graphql-ws")]) as ws:
        # Then it is not negotiated, and the socket closes (4406) without an ack
        assert ws.subprotocol is None
        reply = await _init(ws, {"authorization": f"Bearer {token}"})
        assert reply == 4406


@sqlite_only
async def test_a_socket_from_a_foreign_origin_is_refused(live: LiveServer, admin: Actor) -> None:
    token = (await tokens_for(live.http, admin))["accessToken"]
    # A page on evil.example cannot open a socket with the user's token
    with pytest.raises(InvalidStatus) as refused_handshake:
        async with connect(
            live.ws_url, subprotocols=[TRANSPORT_WS], origin=Origin("https://evil.example")
        ) as ws:
            await _init(ws, {"authorization": f"Bearer {token}"})
    assert refused_handshake.value.response.status_code == 403
