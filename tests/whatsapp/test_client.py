"""The Cloud API client against the fake_meta Cloud API, served over real HTTP."""

from __future__ import annotations

import logging
import pickle
import socket
from typing import Any

import httpx
import pytest

from tests.fixtures.meta import ACCESS_TOKEN, OTHER_ACCESS_TOKEN, PHONE_NUMBER_ID, VERSION
from weflux.config import Settings
from weflux.logs import ConsoleFormatter, JsonFormatter
from weflux.models import QualityRating
from weflux.sandbox.cloud_api import DEFAULT_BUSINESS_ACCOUNT_ID, FakeCloudApi
from weflux.whatsapp.client import HEALTH_FIELDS, CloudApiClient, PhoneNumberHealth, SentMessage
from weflux.whatsapp.errors import ErrorKind, MetaApiError, MetaUnavailable, classify

LOGGER = "weflux.whatsapp.client"
TEXT = {"to": "+1 650-555-1234", "type": "text", "text": {"body": "Hello"}}


def _free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _token_free(*texts: str) -> None:
    for text in texts:
        assert ACCESS_TOKEN not in text
        assert ACCESS_TOKEN[:24] not in text


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


# -- health -------------------------------------------------------------------------------


async def test_health_reads_every_field(cloud: CloudApiClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.set_health(
        PHONE_NUMBER_ID,
        display_phone_number="+1 555-078-3881",
        verified_name="Acme",
        messaging_limit_tier="TIER_10K",
        throughput_level="HIGH",
    )
    health = await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert health == PhoneNumberHealth(
        quality_rating=QualityRating.GREEN,
        messaging_limit_tier="TIER_10K",
        throughput_level="HIGH",
        display_phone_number="+1 555-078-3881",
        verified_name="Acme",
        status="CONNECTED",
        name_status="APPROVED",
    )
    request = fake_meta.requests[-1]
    assert request.method == "GET"
    assert request.path == f"/{VERSION}/{PHONE_NUMBER_ID}"
    assert request.query == {"fields": ",".join(HEALTH_FIELDS)}
    assert request.authorization == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("GREEN", QualityRating.GREEN),
        ("YELLOW", QualityRating.YELLOW),
        ("RED", QualityRating.RED),
        ("UNKNOWN", QualityRating.UNKNOWN),
        ("NA", QualityRating.UNKNOWN),
        (None, QualityRating.UNKNOWN),
    ],
)
async def test_quality_rating(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, reported: str | None, expected: QualityRating
) -> None:
    fake_meta.set_health(PHONE_NUMBER_ID, quality_rating=reported)
    health = await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert health.quality_rating is expected
    assert health.quality_rating == expected.value


@pytest.mark.parametrize(
    "tier", ["TIER_250", "TIER_2K", "TIER_10K", "TIER_100K", "TIER_UNLIMITED", None]
)
async def test_messaging_limit_tier(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, tier: str | None
) -> None:
    fake_meta.set_health(PHONE_NUMBER_ID, messaging_limit_tier=tier)
    health = await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert health.messaging_limit_tier == tier


async def test_absent_fields_read_as_none(cloud: CloudApiClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.set_health(
        PHONE_NUMBER_ID,
        throughput_level=None,
        status=None,
        name_status=None,
        verified_name=None,
        quality_rating=None,
        messaging_limit_tier=None,
    )
    health = await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert health.quality_rating is QualityRating.UNKNOWN
    assert health.messaging_limit_tier is None
    assert health.throughput_level is None
    assert health.status is None
    assert health.name_status is None
    assert health.verified_name is None
    assert health.display_phone_number == "+1 555 0100"


# -- send ---------------------------------------------------------------------------------


async def test_send_message(cloud: CloudApiClient, fake_meta: FakeCloudApi) -> None:
    payload = dict(TEXT)
    sent = await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, payload)
    assert isinstance(sent, SentMessage)
    assert sent.wa_message_id.startswith("wamid.")
    assert sent.wa_id == "16505551234"
    assert sent.message_status is None
    assert payload == TEXT, "the caller's payload is not modified"

    request = fake_meta.requests[-1]
    assert request.method == "POST"
    assert request.path == f"/{VERSION}/{PHONE_NUMBER_ID}/messages"
    assert request.json == {"messaging_product": "whatsapp", **TEXT}
    assert request.headers["content-type"] == "application/json"
    assert fake_meta.sent[-1].wa_message_id == sent.wa_message_id


async def test_token_travels_only_in_the_authorization_header(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    for request in fake_meta.requests:
        assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert ACCESS_TOKEN not in request.path
        assert "access_token" not in request.query
        assert all(ACCESS_TOKEN not in value for value in request.query.values())
        assert ACCESS_TOKEN.encode() not in request.body
        others = {k: v for k, v in request.headers.items() if k != "authorization"}
        assert all(ACCESS_TOKEN not in value for value in others.values())


async def test_each_call_uses_the_token_it_is_given(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    fake_meta.add_number("555000111", access_token=OTHER_ACCESS_TOKEN + "x")
    await cloud.phone_number_health("555000111", OTHER_ACCESS_TOKEN + "x")
    await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert [r.authorization for r in fake_meta.requests] == [
        f"Bearer {OTHER_ACCESS_TOKEN}x",
        f"Bearer {ACCESS_TOKEN}",
    ]


# -- a business account's phone numbers ---------------------------------------------------


async def test_a_listed_number_is_found_across_metas_pages(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    """Given a business account whose numbers come two to a page, the wanted one last,
    when the client asks whether the account lists it,
    then it follows the `after` cursors on the configured host, token in the header only."""
    for n in range(5):
        fake_meta.add_number(f"7000000000{n}", access_token=ACCESS_TOKEN)
    fake_meta.max_page_size = 2
    assert await cloud.lists_phone_number(DEFAULT_BUSINESS_ACCOUNT_ID, "70000000004", ACCESS_TOKEN)
    pages = [r for r in fake_meta.requests if r.path.endswith("/phone_numbers")]
    assert len(pages) == 4
    assert "after" not in pages[0].query
    assert all(p.query.get("after") for p in pages[1:])
    for request in pages:
        assert request.path == f"/{VERSION}/{DEFAULT_BUSINESS_ACCOUNT_ID}/phone_numbers"
        assert request.authorization == f"Bearer {ACCESS_TOKEN}"
        assert all(ACCESS_TOKEN not in value for value in request.query.values())


async def test_a_number_the_account_does_not_list_is_not_found(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    """Given a number of another business account that the same token holds,
    when the client asks whether the first account lists it,
    then the answer is no after the last page, and an account the token cannot see is an error."""
    fake_meta.add_number("70000000009", access_token=ACCESS_TOKEN, business_account_id="4242")
    fake_meta.max_page_size = 1
    listed = await cloud.lists_phone_number(
        DEFAULT_BUSINESS_ACCOUNT_ID, "70000000009", ACCESS_TOKEN
    )
    assert listed is False
    with pytest.raises(MetaApiError) as error:
        await cloud.lists_phone_number("4242", PHONE_NUMBER_ID, OTHER_ACCESS_TOKEN)
    assert (error.value.code, error.value.subcode) == (100, 33)
    with pytest.raises(ValueError, match="business_account_id"):
        await cloud.lists_phone_number("../me", PHONE_NUMBER_ID, ACCESS_TOKEN)


async def test_template_send_reports_message_status(cloud: CloudApiClient) -> None:
    payload = {
        "messaging_product": "whatsapp",
        "to": "16505551234",
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    sent = await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, payload)
    assert sent.message_status == "accepted"


async def test_every_send_gets_a_fresh_wamid(cloud: CloudApiClient) -> None:
    ids = {
        (await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))).wa_message_id
        for _ in range(5)
    }
    assert len(ids) == 5


async def test_foreign_messaging_product_is_refused(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    with pytest.raises(ValueError, match="messaging_product"):
        await cloud.send_message(
            PHONE_NUMBER_ID, ACCESS_TOKEN, {**TEXT, "messaging_product": "sms"}
        )
    assert fake_meta.requests == []


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "subcode", "http_status", "kind"),
    [
        (190, 463, 401, ErrorKind.TOKEN_INVALID),
        (130429, None, 400, ErrorKind.RATE_LIMITED),
        (131056, None, 400, ErrorKind.RATE_LIMITED),
        (80007, None, 400, ErrorKind.RATE_LIMITED),
        (4, None, 400, ErrorKind.RATE_LIMITED),
        (131000, None, 500, ErrorKind.RETRYABLE),
        (1, None, 500, ErrorKind.RETRYABLE),
        (2, None, 503, ErrorKind.RETRYABLE),
        (131016, None, 503, ErrorKind.RETRYABLE),
        (131047, None, 400, ErrorKind.OUTSIDE_SERVICE_WINDOW),
        (131026, None, 400, ErrorKind.PERMANENT),
        (131051, None, 400, ErrorKind.PERMANENT),
        (132000, None, 400, ErrorKind.PERMANENT),
        (132015, None, 400, ErrorKind.PERMANENT),
        (368, 2446079, 400, ErrorKind.PERMANENT),
        (100, 33, 400, ErrorKind.PERMANENT),
    ],
)
async def test_error_families_are_classified(
    cloud: CloudApiClient,
    fake_meta: FakeCloudApi,
    caplog: pytest.LogCaptureFixture,
    code: int,
    subcode: int | None,
    http_status: int,
    kind: ErrorKind,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fake_meta.fail_next(code=code, subcode=subcode, http_status=http_status)
    with pytest.raises(MetaApiError) as caught:
        await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    error = caught.value
    assert type(error) is MetaApiError
    assert (error.code, error.subcode, error.http_status, error.kind) == (
        code,
        subcode,
        http_status,
        kind,
    )
    assert error.fbtrace_id is not None
    assert error.fbtrace_id == fake_meta.requests[-1].fbtrace_id
    assert error.title
    assert error.message
    assert fake_meta.sent == []

    [record] = _records(caplog)
    assert record.levelno == logging.WARNING
    extras: dict[str, Any] = record.__dict__
    assert extras["code"] == code
    assert extras["subcode"] == subcode
    assert extras["fbtrace_id"] == error.fbtrace_id
    assert extras["http_status"] == http_status
    assert extras["kind"] == kind.value
    _token_free(str(error), repr(error), JsonFormatter().format(record))

    # The next call goes through again.
    assert (await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))).wa_message_id


async def test_whatsapp_error_details_become_the_message(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    details = "Message failed to send because more than 24 hours have passed"
    fake_meta.fail_next(code=131047, details=details)
    with pytest.raises(MetaApiError) as caught:
        await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    assert caught.value.title == "Re-engagement message"
    assert caught.value.message == details
    assert "131047" in str(caught.value)
    assert caught.value.fbtrace_id is not None
    assert caught.value.fbtrace_id in str(caught.value)


async def test_real_invalid_token_answer(cloud: CloudApiClient) -> None:
    with pytest.raises(MetaApiError) as caught:
        await cloud.phone_number_health(PHONE_NUMBER_ID, "EAAwrongwrongwrongwrongwrong")
    assert caught.value.code == 190
    assert caught.value.http_status == 401
    assert caught.value.kind is ErrorKind.TOKEN_INVALID
    assert "wrongwrong" not in str(caught.value)


async def test_unknown_number_is_permanent(cloud: CloudApiClient) -> None:
    with pytest.raises(MetaApiError) as caught:
        await cloud.phone_number_health("999999", ACCESS_TOKEN)
    error = caught.value
    assert (error.code, error.subcode, error.http_status) == (100, 33, 400)
    assert error.kind is ErrorKind.PERMANENT
    assert "does not exist" in error.message


async def test_token_of_another_number_is_refused(cloud: CloudApiClient) -> None:
    with pytest.raises(MetaApiError) as caught:
        await cloud.send_message(PHONE_NUMBER_ID, OTHER_ACCESS_TOKEN, dict(TEXT))
    assert (caught.value.code, caught.value.subcode) == (100, 33)


async def test_html_500_is_retryable(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fake_meta.fail_next_raw(http_status=500)
    with pytest.raises(MetaApiError) as caught:
        await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    error = caught.value
    assert (error.code, error.subcode, error.http_status) == (None, None, 500)
    assert error.kind is ErrorKind.RETRYABLE
    assert "<html>" not in str(error)
    # No body to read it from: the trace id comes from Meta's `x-fb-trace-id` header.
    assert error.fbtrace_id is not None
    [record] = _records(caplog)
    assert record.__dict__["fbtrace_id"] == error.fbtrace_id


async def test_unparseable_4xx_is_permanent(cloud: CloudApiClient, fake_meta: FakeCloudApi) -> None:
    fake_meta.fail_next_raw(http_status=403, body="Forbidden", content_type="text/plain")
    with pytest.raises(MetaApiError) as caught:
        await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert (caught.value.code, caught.value.http_status) == (None, 403)
    assert caught.value.kind is ErrorKind.PERMANENT


async def test_timeout_is_meta_unavailable(
    meta_url: str, fake_meta: FakeCloudApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    impatient = CloudApiClient(
        meta_url, VERSION, timeout=httpx.Timeout(connect=5, read=0.2, write=5, pool=5)
    )
    fake_meta.delay_next(3)
    try:
        with pytest.raises(MetaUnavailable) as caught:
            await impatient.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    finally:
        await impatient.aclose()
    error = caught.value
    assert error.kind is ErrorKind.RETRYABLE
    assert error.http_status is None
    assert error.code is None
    assert "ReadTimeout" in error.message
    # No httpx exception (holding the request and its headers) rides along.
    assert error.__context__ is None
    assert error.__cause__ is None
    [record] = _records(caplog)
    assert record.__dict__["kind"] == "RETRYABLE"
    _token_free(str(error), JsonFormatter().format(record))


async def test_connection_refused_is_meta_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    port = _free_closed_port()
    async with CloudApiClient(f"http://127.0.0.1:{port}", VERSION) as closed:
        with pytest.raises(MetaUnavailable) as caught:
            await closed.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert caught.value.kind is ErrorKind.RETRYABLE
    assert caught.value.http_status is None
    assert "ConnectError" in caught.value.message
    assert len(_records(caplog)) == 1


async def test_token_never_reaches_logs_or_errors(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when Meta's message echoes the token back, it is scrubbed.

    INFO and up: at DEBUG, httpcore's own trace logs print response headers verbatim.
    """
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="weflux")
    fake_meta.fail_next(
        code=190,
        http_status=401,
        message=f"Error validating access token: {ACCESS_TOKEN} has expired",
        details=f"token {ACCESS_TOKEN}",
    )
    errors: list[MetaApiError] = []
    with pytest.raises(MetaApiError) as caught:
        await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    errors.append(caught.value)
    fake_meta.fail_next(code=131047, details=f"a stranger's token EAAB{'x' * 40} leaked")
    with pytest.raises(MetaApiError) as caught:
        await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    errors.append(caught.value)
    assert "xxxxxxxxxxxxxxxxxxxx" not in str(caught.value)
    await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))

    assert caplog.records
    for record in caplog.records:
        _token_free(
            record.getMessage(),
            JsonFormatter().format(record),
            ConsoleFormatter().format(record),
            repr(record.__dict__),
        )
    for error in errors:
        _token_free(str(error), repr(error), repr(error.args), error.title, error.message)
        assert "[redacted]" in str(error)


async def test_each_failure_is_logged_once(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    fake_meta.fail_next(3, code=130429)
    for _ in range(3):
        with pytest.raises(MetaApiError):
            await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    records = _records(caplog)
    assert len(records) == 3
    assert len({record.__dict__["fbtrace_id"] for record in records}) == 3
    assert all(record.__dict__["operation"] == "send_message" for record in records)


# -- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "../me",
        "123/messages",
        "123?fields=access_token",
        "123#x",
        "12a",
        " 123",
        "123\n",
        "%2e%2e",
        "\u0661\u0662\u0663",  # Arabic-Indic digits are digits to str.isdigit, not to us
        "1" * 33,
    ],
)
async def test_invalid_path_ids_are_refused(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, bad_id: str
) -> None:
    with pytest.raises(ValueError, match="phone_number_id"):
        await cloud.phone_number_health(bad_id, ACCESS_TOKEN)
    with pytest.raises(ValueError, match="phone_number_id"):
        await cloud.send_message(bad_id, ACCESS_TOKEN, dict(TEXT))
    assert fake_meta.requests == []


@pytest.mark.parametrize("bad_token", ["", "tok en", "token\r\nX-Injected: 1", "tök"])
async def test_unusable_tokens_are_refused_without_echo(
    cloud: CloudApiClient, fake_meta: FakeCloudApi, bad_token: str
) -> None:
    with pytest.raises(ValueError, match="access token") as caught:
        await cloud.phone_number_health(PHONE_NUMBER_ID, bad_token)
    if bad_token:
        assert bad_token not in str(caught.value)
    assert fake_meta.requests == []


@pytest.mark.parametrize(
    ("graph_url", "version"),
    [
        ("graph.facebook.com", "v25.0"),
        ("ftp://graph.facebook.com", "v25.0"),
        ("https://graph.facebook.com?x=1", "v25.0"),
        ("https://user:pw@graph.facebook.com", "v25.0"),
        ("https://graph.facebook.com", "25.0"),
        ("https://graph.facebook.com", "v25.0/../me"),
    ],
)
def test_bad_configuration_is_refused(graph_url: str, version: str) -> None:
    with pytest.raises(ValueError):
        CloudApiClient(graph_url, version)


# -- the shared client --------------------------------------------------------------------


async def test_one_shared_client_and_connection(
    cloud: CloudApiClient, fake_meta: FakeCloudApi
) -> None:
    shared = cloud._http
    await cloud.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    fake_meta.fail_next(code=131047)
    with pytest.raises(MetaApiError):
        await cloud.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    assert cloud._http is shared
    # Keep-alive: every call went over the same pooled connection (same client port).
    assert len({request.client for request in fake_meta.requests}) == 1


async def test_aclose_closes_the_pool(meta_url: str) -> None:
    client = CloudApiClient(meta_url, VERSION)
    await client.aclose()
    assert client._http.is_closed


def test_from_settings(meta_url: str) -> None:
    settings = Settings(_env_file=None, meta_graph_url=meta_url + "/", meta_graph_version="v25.0")
    client = CloudApiClient.from_settings(settings)
    assert client.base_url == f"{meta_url}/v25.0/"
    assert str(client._http.base_url) == f"{meta_url}/v25.0/"
    assert client._http.timeout == httpx.Timeout(connect=5, read=15, write=15, pool=5)
    assert client._http.follow_redirects is False


def test_defaults_point_at_meta() -> None:
    client = CloudApiClient.from_settings(Settings(_env_file=None))
    assert client.base_url == "https://graph.facebook.com/v25.0/"


async def test_redirects_are_not_followed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "https://evil.example/steal"})

    async with CloudApiClient(
        "https://graph.facebook.com", VERSION, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(MetaApiError) as caught:
            await client.phone_number_health(PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert len(seen) == 1
    assert caught.value.http_status == 302
    assert caught.value.kind is ErrorKind.PERMANENT


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"messages": []}'])
async def test_unexpected_success_bodies(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with CloudApiClient(
        "https://graph.facebook.com", VERSION, transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(MetaApiError) as caught:
            await client.send_message(PHONE_NUMBER_ID, ACCESS_TOKEN, dict(TEXT))
    assert caught.value.http_status == 200
    assert caught.value.kind is ErrorKind.PERMANENT


# -- the error types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status", "kind"),
    [
        (190, 401, ErrorKind.TOKEN_INVALID),
        (190, None, ErrorKind.TOKEN_INVALID),
        (130429, 400, ErrorKind.RATE_LIMITED),
        (131056, 400, ErrorKind.RATE_LIMITED),
        (80007, 400, ErrorKind.RATE_LIMITED),
        (4, 400, ErrorKind.RATE_LIMITED),
        (131000, 500, ErrorKind.RETRYABLE),
        (1, 400, ErrorKind.RETRYABLE),
        (2, 400, ErrorKind.RETRYABLE),
        (131016, 400, ErrorKind.RETRYABLE),
        (131047, 400, ErrorKind.OUTSIDE_SERVICE_WINDOW),
        (131026, 400, ErrorKind.PERMANENT),
        (131051, 400, ErrorKind.PERMANENT),
        (132000, 400, ErrorKind.PERMANENT),
        (132007, 400, ErrorKind.PERMANENT),
        (132015, 400, ErrorKind.PERMANENT),
        (132016, 500, ErrorKind.RETRYABLE),
        (368, 400, ErrorKind.PERMANENT),
        (100, 400, ErrorKind.PERMANENT),
        (131026, 500, ErrorKind.PERMANENT),
        (None, 500, ErrorKind.RETRYABLE),
        (None, 502, ErrorKind.RETRYABLE),
        (None, 404, ErrorKind.PERMANENT),
        (None, 429, ErrorKind.RATE_LIMITED),
        (None, None, ErrorKind.RETRYABLE),
        (131049, None, ErrorKind.PERMANENT),
        (99999, 503, ErrorKind.RETRYABLE),
    ],
)
def test_classify(code: int | None, http_status: int | None, kind: ErrorKind) -> None:
    assert classify(code, http_status) is kind


def test_errors_pickle_and_stay_hashable() -> None:
    error = MetaApiError(
        code=131047,
        subcode=None,
        title="Re-engagement message",
        message="window closed",
        fbtrace_id="Atrace",
        http_status=400,
        kind=ErrorKind.OUTSIDE_SERVICE_WINDOW,
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert (copy.code, copy.kind, copy.fbtrace_id, str(copy)) == (
        131047,
        ErrorKind.OUTSIDE_SERVICE_WINDOW,
        "Atrace",
        str(error),
    )
    unavailable = MetaUnavailable(title="Cloud API timed out", message="ReadTimeout")
    assert unavailable.kind is ErrorKind.RETRYABLE
    assert pickle.loads(pickle.dumps(unavailable)).message == "ReadTimeout"  # noqa: S301
    assert len({error, unavailable}) == 2


def test_error_scrubs_token_shaped_text() -> None:
    error = MetaApiError(
        code=190,
        subcode=None,
        title="Bad token",
        message=f"token {ACCESS_TOKEN} expired",
        fbtrace_id=None,
        http_status=401,
        kind=ErrorKind.TOKEN_INVALID,
    )
    _token_free(str(error), repr(error), repr(error.args))
