"""Structured logs carry the request id and the extras, one JSON object a line."""

from __future__ import annotations

import json
import logging
import uuid

import httpx
import pytest
import websockets

from tests.fixtures.api import gql, token_for
from tests.fixtures.factories import Actor
from weflux.logs import (
    ClientDataFilter,
    JsonFormatter,
    RequestIdFilter,
    describe_exception,
    loggable_target,
    request_id_var,
)


def test_json_lines_carry_request_id_and_extras() -> None:
    token = request_id_var.set("req-abc")
    try:
        record = logging.LogRecord(
            "weflux.test", logging.INFO, __file__, 1, "hello %s", ("x",), None
        )
        record.status = 201
        RequestIdFilter().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "hello x"
    assert line["request_id"] == "req-abc"
    assert line["status"] == 201
    assert line["level"] == "info"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_access_log_names_the_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="weflux.access")
    response = await client.get("/healthz", headers={"X-Request-ID": "trace-0001-abcd"})
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "weflux.access"]
    assert records
    assert records[-1].status == 200  # type: ignore[attr-defined]
    assert records[-1].getMessage() == "GET /healthz"


def _record(name: str, msg: str, *args: object, pathname: str = __file__) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, pathname, 1, msg, args, None)
    return record


def test_uvicorn_lines_lose_the_query_string() -> None:
    """Given uvicorn's WebSocket and access lines for targets with a query string,
    when they pass the filter, then the path stays and the query is gone."""
    guard = ClientDataFilter()
    accepted = _record(
        "uvicorn.error", '%s - "WebSocket %s" [accepted]', "10.0.0.1:5000", "/graphql?token=s3"
    )
    access = _record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "10.0.0.1:5000",
        "GET",
        "/webhooks/whatsapp?hub.verify_token=s3",
        "1.1",
        403,
    )
    assert guard.filter(accepted)
    assert guard.filter(access)
    assert accepted.getMessage() == '10.0.0.1:5000 - "WebSocket /graphql" [accepted]'
    assert access.getMessage() == '10.0.0.1:5000 - "GET /webhooks/whatsapp HTTP/1.1" 403'


def test_websocket_frame_traces_and_origins_are_not_logged() -> None:
    """Given the websockets library's DEBUG trace of a frame and Strawberry's refused-origin
    warning, when they pass the filter, then the trace is dropped and the origin unquoted."""

    guard = ClientDataFilter()
    frame = _record(
        "uvicorn.error",
        "< TEXT %s [%d bytes]",
        '\'{"type":"connection_init","payload":{"authorization":"Bearer s3"}}\'',
        60,
        pathname=websockets.__file__.replace("__init__.py", "protocol.py"),
    )
    assert guard.filter(frame) is False
    origin = _record(
        "strawberry.ws",
        "Rejected WebSocket connection from origin %r to host %r. If pages …",
        "https://s3.example",
        "api.example",
    )
    assert guard.filter(origin)
    assert "s3" not in origin.getMessage()


def test_an_exception_is_described_by_its_frames_and_classes_only() -> None:
    """Given an exception raised from another, both with messages quoting input,
    when it is described for a log, then frames and classes show and no message does."""
    literal, key = f"s3cret-{uuid.uuid4().hex}", f"s3cret-{uuid.uuid4().hex}"

    def fail() -> None:
        try:
            int(literal)
        except ValueError as error:
            raise KeyError(key) from error

    try:
        fail()
    except KeyError as error:
        described = describe_exception(error)
    assert literal not in described
    assert key not in described
    assert "builtins.KeyError" in described
    assert "builtins.ValueError" in described
    assert "in fail" in described


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_graphql_errors_are_logged_by_operation_and_code_only(
    client: httpx.AsyncClient, admin: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a document whose literal has a typo (so the error message quotes it),
    when it is sent, then one line per error names the operation, its type and the code,
    and no line holds the literal."""
    token = await token_for(client, admin)
    caplog.set_level(logging.DEBUG)
    response = await gql(
        client,
        token,
        'mutation Change { changePassword(input: {currentPasword: "s3cret-value"}) }',
    )
    assert "s3cret-value" in response.text  # the client's own value, answered to the client
    records = [r for r in caplog.records if r.name == "weflux.gql.errors"]
    assert records
    assert {(r.operation, r.operation_type, r.code) for r in records} == {  # type: ignore[attr-defined]
        ("Change", "mutation", "GRAPHQL_VALIDATION_FAILED")
    }
    assert "s3cret-value" not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("strawberry")]


def test_a_webhook_urls_key_is_cut_from_logged_targets() -> None:
    """Given uvicorn's access line for a keyed webhook URL (the key is a capability naming
    the channel), when it passes the filter, then only the key's first 4 characters stay;
    the app's own access log and `weflux simulate` show targets the same way."""
    key = "Kq7vT3xR9mW2pL8sN4bY6cZ1"
    access = _record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        "10.0.0.1:5000",
        "POST",
        f"/webhooks/whatsapp/{key}",
        "1.1",
        200,
    )
    assert ClientDataFilter().filter(access)
    assert key not in access.getMessage()
    assert "/webhooks/whatsapp/Kq7v…" in access.getMessage()
    assert loggable_target(f"http://127.0.0.1:8000/webhooks/whatsapp/{key}?x=1") == (
        "http://127.0.0.1:8000/webhooks/whatsapp/Kq7v…"
    )
    assert loggable_target("/webhooks/whatsapp") == "/webhooks/whatsapp"
