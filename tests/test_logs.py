"""Structured logs carry the request id and the extras, one JSON object a line."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from weflux.logs import JsonFormatter, RequestIdFilter, request_id_var


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
