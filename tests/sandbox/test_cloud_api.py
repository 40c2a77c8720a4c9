"""The fake_meta Cloud API answers like Meta's Graph API, over real HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.requests import Request

from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.meta import (
    ACCESS_TOKEN,
    OTHER_PHONE_NUMBER_ID,
    PHONE_NUMBER_ID,
    VERSION,
)
from weflux.sandbox import cloud_api
from weflux.sandbox.cloud_api import (
    DEFAULT_BUSINESS_ACCOUNT_ID,
    FakeCloudApi,
    main,
    running,
)

TRACE = re.compile(r"A[A-Za-z0-9]{22}")
AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
TEXT = {
    "messaging_product": "whatsapp",
    "to": "+16505551234",
    "type": "text",
    "text": {"body": "hi"},
}


@pytest.fixture
async def http(meta_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=f"{meta_url}/{VERSION}/") as client:
        yield client


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert isinstance(error["message"], str)
    assert isinstance(error["type"], str)
    assert isinstance(error["code"], int)
    assert isinstance(error["fbtrace_id"], str)
    assert TRACE.fullmatch(error["fbtrace_id"])
    assert response.headers["x-fb-trace-id"] == error["fbtrace_id"]
    return error


# -- the phone number node ----------------------------------------------------------------


async def test_get_returns_only_requested_fields_and_id(http: httpx.AsyncClient) -> None:
    response = await http.get(
        PHONE_NUMBER_ID,
        params={"fields": "quality_rating,throughput,whatsapp_business_manager_messaging_limit"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json() == {
        "quality_rating": "GREEN",
        "throughput": {"level": "STANDARD"},
        "whatsapp_business_manager_messaging_limit": "TIER_2K",
        "id": PHONE_NUMBER_ID,
    }


async def test_get_without_fields_returns_the_defaults(http: httpx.AsyncClient) -> None:
    body = (await http.get(PHONE_NUMBER_ID, headers=AUTH)).json()
    assert body == {
        "verified_name": "Weflux Test",
        "code_verification_status": "VERIFIED",
        "display_phone_number": "+1 555 0100",
        "quality_rating": "GREEN",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "STANDARD"},
        "id": PHONE_NUMBER_ID,
    }


async def test_absent_fields_are_left_out(http: httpx.AsyncClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.set_health(PHONE_NUMBER_ID, messaging_limit_tier=None, quality_rating="YELLOW")
    body = (
        await http.get(
            PHONE_NUMBER_ID,
            params={"fields": "quality_rating,whatsapp_business_manager_messaging_limit"},
            headers=AUTH,
        )
    ).json()
    assert body == {"quality_rating": "YELLOW", "id": PHONE_NUMBER_ID}


async def test_unknown_field_is_meta_error_100(http: httpx.AsyncClient) -> None:
    response = await http.get(PHONE_NUMBER_ID, params={"fields": "secret_sauce"}, headers=AUTH)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == 100
    assert "nonexisting field (secret_sauce)" in str(error["message"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ACCESS_TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
async def test_wrong_or_missing_token_is_401_code_190(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.get(PHONE_NUMBER_ID, headers=headers)
    assert response.status_code == 401
    error = _error(response)
    assert error == {
        "message": "Invalid OAuth access token - Cannot parse access token",
        "type": "OAuthException",
        "code": 190,
        "fbtrace_id": error["fbtrace_id"],
    }
    assert response.headers["www-authenticate"].startswith('OAuth "Facebook Platform"')


async def test_token_in_the_query_works_like_meta(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    response = await http.get(PHONE_NUMBER_ID, params={"access_token": ACCESS_TOKEN})
    assert response.status_code == 200
    assert fake_meta.requests[-1].query["access_token"] == ACCESS_TOKEN


@pytest.mark.parametrize("node", ["999", OTHER_PHONE_NUMBER_ID])
async def test_unknown_or_foreign_number_is_code_100_subcode_33(
    http: httpx.AsyncClient, node: str
) -> None:
    """A valid token, but for a number that does not exist or belongs to another token."""
    response = await http.get(node, headers=AUTH)
    assert response.status_code == 400
    error = _error(response)
    assert (error["code"], error["error_subcode"], error["type"]) == (
        100,
        33,
        "GraphMethodException",
    )
    assert str(error["message"]).startswith(
        f"Unsupported get request. Object with ID '{node}' does not exist"
    )


async def test_decoded_path_cannot_inject_headers(http: httpx.AsyncClient) -> None:
    response = await http.get("%0d%0aX-Evil:%201", headers=AUTH)
    assert response.status_code == 400
    assert "x-evil" not in response.headers
    assert "\n" not in response.headers["www-authenticate"]


async def test_unknown_path_is_meta_error(http: httpx.AsyncClient) -> None:
    for method, path in [("GET", "123/unknown/deep"), ("DELETE", PHONE_NUMBER_ID)]:
        response = await http.request(method, path, headers=AUTH)
        assert response.status_code == 400
        assert _error(response)["code"] == 2500
    response = await http.get("/not-a-version/123", headers=AUTH)
    assert _error(response)["code"] == 2500


# -- messages ----------------------------------------------------------------------------


async def test_send_answers_like_meta_and_records(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    response = await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    [message] = body["messages"]
    assert body == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
        "messages": [{"id": message["id"]}],
    }
    assert message["id"].startswith("wamid.HBgL")
    [sent] = fake_meta.sent
    assert (sent.phone_number_id, sent.wa_message_id, sent.to) == (
        PHONE_NUMBER_ID,
        message["id"],
        "+16505551234",
    )
    assert sent.payload == TEXT
    [request] = fake_meta.requests
    assert request.method == "POST"
    assert request.path == f"/{VERSION}/{PHONE_NUMBER_ID}/messages"
    assert request.json == TEXT
    assert request.authorization == f"Bearer {ACCESS_TOKEN}"
    assert request.status == 200
    assert request.response == body


async def test_template_send_is_accepted(http: httpx.AsyncClient) -> None:
    payload = {
        "messaging_product": "whatsapp",
        "to": "16505551234",
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    body = (await http.post(f"{PHONE_NUMBER_ID}/messages", json=payload, headers=AUTH)).json()
    assert body["messages"][0]["message_status"] == "accepted"


async def test_wamids_are_unique(http: httpx.AsyncClient, fake_meta: FakeCloudApi) -> None:
    for _ in range(20):
        await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT, headers=AUTH)
    assert len({sent.wa_message_id for sent in fake_meta.sent}) == 20


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({k: v for k, v in TEXT.items() if k != "messaging_product"}, "messaging_product"),
        ({**TEXT, "messaging_product": "sms"}, "messaging_product must be one of"),
        ({k: v for k, v in TEXT.items() if k != "to"}, "parameter to is required"),
        ({**TEXT, "to": ""}, "parameter to is required"),
        ({**TEXT, "type": "hologram"}, "type must be one of"),
        ({**TEXT, "type": "image"}, "parameter image is required"),
        ({**TEXT, "text": {}}, "text['body']"),
        ([TEXT], "Invalid parameter"),
    ],
)
async def test_send_validation_errors(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi, payload: object, complaint: str
) -> None:
    response = await http.post(f"{PHONE_NUMBER_ID}/messages", json=payload, headers=AUTH)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == 100
    assert complaint in str(error["message"])
    assert fake_meta.sent == []


async def test_type_defaults_to_text_like_meta(http: httpx.AsyncClient) -> None:
    payload = {k: v for k, v in TEXT.items() if k != "type"}
    response = await http.post(f"{PHONE_NUMBER_ID}/messages", json=payload, headers=AUTH)
    assert response.status_code == 200


async def test_send_with_bad_token_or_unknown_number(http: httpx.AsyncClient) -> None:
    response = await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT)
    assert (response.status_code, _error(response)["code"]) == (401, 190)
    response = await http.post("42/messages", json=TEXT, headers=AUTH)
    error = _error(response)
    assert (response.status_code, error["code"], error["error_subcode"]) == (400, 100, 33)
    assert str(error["message"]).startswith("Unsupported post request.")


# -- switchable behaviour ----------------------------------------------------------------


async def test_fail_next_answers_the_next_n_calls(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    fake_meta.fail_next(2, code=131047, http_status=400, details="24 hours have passed")
    traces = []
    for _ in range(2):
        response = await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT, headers=AUTH)
        assert response.status_code == 400
        error = _error(response)
        assert error == {
            "message": "(#131047) Re-engagement message",
            "type": "OAuthException",
            "code": 131047,
            "error_data": {"messaging_product": "whatsapp", "details": "24 hours have passed"},
            "fbtrace_id": error["fbtrace_id"],
        }
        traces.append(error["fbtrace_id"])
    assert traces[0] != traces[1]
    assert [r.fbtrace_id for r in fake_meta.requests] == traces
    ok = await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT, headers=AUTH)
    assert ok.status_code == 200
    assert len(fake_meta.sent) == 1


async def test_fail_next_shapes(http: httpx.AsyncClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.fail_next(code=190, subcode=463, http_status=401, message="Session has expired")
    response = await http.get(PHONE_NUMBER_ID, headers=AUTH)
    error = _error(response)
    assert response.status_code == 401
    assert (error["code"], error["error_subcode"], error["message"]) == (
        190,
        463,
        "Session has expired",
    )
    assert "error_data" not in error
    assert "invalid_token" in response.headers["www-authenticate"]

    fake_meta.fail_next(code=4, title="Application request limit reached", details="slow down")
    error = _error(await http.get(PHONE_NUMBER_ID, headers=AUTH))
    assert error["message"] == "(#4) Application request limit reached"
    assert error["error_user_msg"] == "slow down"


async def test_fail_next_raw(http: httpx.AsyncClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.fail_next_raw(http_status=502, body="<html>Bad gateway</html>")
    response = await http.get(PHONE_NUMBER_ID, headers=AUTH)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>Bad gateway</html>"
    assert TRACE.fullmatch(response.headers["x-fb-trace-id"])
    assert fake_meta.requests[-1].response == "<html>Bad gateway</html>"


async def test_failures_happen_even_without_a_valid_token(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    fake_meta.fail_next(code=131000, http_status=500)
    response = await http.get(PHONE_NUMBER_ID)
    assert (response.status_code, _error(response)["code"]) == (500, 131000)


@dataclass
class Stalls:
    """The fake's stalls (`delay_next`), as they happen: their planned seconds, and their ends."""

    planned: list[float] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def stalls(monkeypatch: pytest.MonkeyPatch) -> Stalls:
    record = Stalls()
    real = cloud_api._stall

    async def watched(request: Request, seconds: float) -> None:
        record.planned.append(seconds)
        try:
            await real(request, seconds)
        finally:
            record.ended.set()

    monkeypatch.setattr(cloud_api, "_stall", watched)
    return record


async def test_delay_next(http: httpx.AsyncClient, fake_meta: FakeCloudApi, stalls: Stalls) -> None:
    fake_meta.delay_next(0.3)
    assert (await http.get(PHONE_NUMBER_ID, headers=AUTH)).status_code == 200
    assert stalls.planned == [0.3]  # the first call was held for 0.3 s before its answer
    assert (await http.get(PHONE_NUMBER_ID, headers=AUTH)).status_code == 200
    assert stalls.planned == [0.3]  # the next one was not held


async def test_delay_then_fail(http: httpx.AsyncClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.delay_next(0.1)
    fake_meta.fail_next(code=2, http_status=503)
    response = await http.get(PHONE_NUMBER_ID, headers=AUTH)
    assert (response.status_code, _error(response)["code"]) == (503, 2)


async def test_a_stalled_call_ends_when_its_client_leaves(
    meta_url: str, fake_meta: FakeCloudApi, stalls: Stalls
) -> None:
    fake_meta.delay_next(30)
    async with httpx.AsyncClient(base_url=meta_url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"/{VERSION}/{PHONE_NUMBER_ID}", headers=AUTH)
    # The handler notices the disconnect and ends its 30 s stall (the server can then stop)
    async with asyncio.timeout(10):
        await stalls.ended.wait()


async def test_set_health_rejects_unknown_fields(fake_meta: FakeCloudApi) -> None:
    with pytest.raises(TypeError, match="colour"):
        fake_meta.set_health(PHONE_NUMBER_ID, colour="GREEN")


async def test_reset(http: httpx.AsyncClient, fake_meta: FakeCloudApi, stalls: Stalls) -> None:
    await http.post(f"{PHONE_NUMBER_ID}/messages", json=TEXT, headers=AUTH)
    fake_meta.fail_next(code=1)
    fake_meta.delay_next(5)
    fake_meta.reset()
    assert (fake_meta.requests, fake_meta.sent, fake_meta.numbers) == ([], [], {})
    fake_meta.add_number(PHONE_NUMBER_ID, access_token=ACCESS_TOKEN)
    assert (await http.get(PHONE_NUMBER_ID, headers=AUTH)).status_code == 200
    assert stalls.planned == []  # the planned delay was forgotten too


async def test_running_serves_on_a_free_loopback_port_and_stops() -> None:
    fake_meta = FakeCloudApi()
    async with running(fake_meta) as first, running(fake_meta) as second:
        assert first != second
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first)
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            assert (await client.get(f"{first}/{VERSION}/1")).status_code == 401
            assert (await client.get(f"{second}/{VERSION}/1")).status_code == 401
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{first}/{VERSION}/1")


def test_main_rejects_a_malformed_number() -> None:
    with pytest.raises(SystemExit):
        main(["--number", "no-token-here"])


# -- a business account's phone numbers ---------------------------------------------------


async def test_phone_numbers_answer_metas_page_shape(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    """Given a business account with three numbers and pages of two,
    when its phone_numbers edge is read page by page,
    then each page is Meta's {data, paging: {cursors, next}} and the last has no next."""
    fake_meta.add_number("106540352242944", access_token=ACCESS_TOKEN)
    fake_meta.max_page_size = 2
    path = f"{DEFAULT_BUSINESS_ACCOUNT_ID}/phone_numbers"
    first = await http.get(path, params={"fields": "id,display_phone_number"}, headers=AUTH)
    assert first.status_code == 200
    page = first.json()
    assert [n["id"] for n in page["data"]] == [PHONE_NUMBER_ID, OTHER_PHONE_NUMBER_ID]
    assert page["data"][0] == {"id": PHONE_NUMBER_ID, "display_phone_number": "+1 555 0100"}
    assert set(page["paging"]["cursors"]) == {"before", "after"}
    assert page["paging"]["next"].startswith("http")
    assert ACCESS_TOKEN not in page["paging"]["next"]

    after = page["paging"]["cursors"]["after"]
    second = (await http.get(path, params={"fields": "id", "after": after}, headers=AUTH)).json()
    assert second["data"] == [{"id": "106540352242944"}]
    assert "next" not in second["paging"]


async def test_phone_numbers_of_an_account_the_token_has_no_number_in_are_refused(
    http: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    """Given a token that holds no number of another business account,
    when it lists that account's numbers (or a bad token lists any),
    then Meta's 100/33 (or 190) error answers and no number is shown."""
    fake_meta.add_number("106540352242955", access_token="EAAGother", business_account_id="7777")
    refused = await http.get(f"{7777}/phone_numbers", headers=AUTH)
    assert refused.status_code == 400
    error = _error(refused)
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert "106540352242955" not in refused.text
    bad = await http.get(
        f"{DEFAULT_BUSINESS_ACCOUNT_ID}/phone_numbers", headers={"Authorization": "Bearer nope"}
    )
    assert bad.status_code == 401
    assert _error(bad)["code"] == 190
