"""The WhatsApp Cloud API client: one shared connection pool, tokens only in headers."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import urlsplit

import httpx

from weflux.config import Settings
from weflux.models.whatsapp import QualityRating
from weflux.tls import client_context
from weflux.whatsapp.errors import ErrorKind, MetaApiError, MetaUnavailable, classify, scrub

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=15.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
HEALTH_FIELDS = (
    "quality_rating",
    "throughput",
    "whatsapp_business_manager_messaging_limit",
    "display_phone_number",
    "verified_name",
    "status",
    "name_status",
)

# `GET /{waba-id}/phone_numbers`: numbers per page asked for, and pages read at most.
PHONE_NUMBERS_PAGE_SIZE = 100
PHONE_NUMBERS_MAX_PAGES = 50

# `GET /{waba-id}/message_templates`: templates per page asked for, and pages read at most.
TEMPLATES_PAGE_SIZE = 100
TEMPLATES_MAX_PAGES = 100
TEMPLATE_FIELDS = ("id", "name", "language", "category", "status", "components")

# Where Meta serves media files (`lookaside.fbsbx.com` today).
META_MEDIA_HOSTS = (".fbsbx.com", ".facebook.com", ".fbcdn.net", ".whatsapp.net")
_PATH_ID = re.compile(r"[0-9]{1,32}")
_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}")
# An access token goes into a header: visible ASCII only, so no header can be injected
# and no HTTP library echoes it back in an "illegal header value" message.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
_MESSAGE_PREFIX = re.compile(r"^\(#\d+\)\s*")
_MAX_TEXT = 1000


@dataclass(frozen=True, slots=True)
class PhoneNumberHealth:
    """Quality, limits and status of a business phone number, as Meta reports them."""

    quality_rating: QualityRating
    messaging_limit_tier: str | None
    throughput_level: str | None
    display_phone_number: str | None
    verified_name: str | None
    status: str | None
    name_status: str | None


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """A message template of a business account, as `GET /{waba-id}/message_templates`
    answers it (the body component's text only; other components are not kept)."""

    meta_template_id: str | None
    name: str
    language: str
    category: str
    status: str
    body_text: str | None


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Meta's acknowledgement of an accepted outbound message."""

    wa_message_id: str
    wa_id: str | None
    message_status: str | None


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """`GET /{media-id}`: where to fetch a media file (a short-lived URL) and what it is."""

    url: str
    mime_type: str | None
    sha256: str | None
    file_size: int | None


def _check_path_id(value: str, what: str) -> str:
    """Refuse anything but an ASCII-digit id of at most 32 characters."""
    if not isinstance(value, str) or not _PATH_ID.fullmatch(value):
        raise ValueError(f"{what} must be 1 to 32 ASCII digits")
    return value


def _check_token(access_token: str) -> str:
    """Refuse an empty token or one that cannot travel in a header, without echoing it."""
    if not isinstance(access_token, str) or not _HEADER_TOKEN.fullmatch(access_token):
        raise ValueError("the access token is empty or holds characters not allowed in a header")
    return access_token


def _text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    """An integer (Meta sometimes sends codes as strings), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


def _clip(text: str) -> str:
    """Bound text kept from a response."""
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _quality(value: Any) -> QualityRating:
    """Map Meta's quality_rating to GREEN/YELLOW/RED, anything else to UNKNOWN."""
    if isinstance(value, str):
        try:
            return QualityRating(value.strip().upper())
        except ValueError:
            pass
    return QualityRating.UNKNOWN


class CloudApiClient:
    """Calls the WhatsApp Cloud API over one shared, pooled `httpx.AsyncClient`."""

    def __init__(
        self,
        graph_url: str,
        version: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        """Build the shared client for `{graph_url}/{version}/`."""
        parts = urlsplit(graph_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the Graph API URL must be an absolute http(s) URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("the Graph API URL must not carry a query, fragment or credentials")
        if not _VERSION.fullmatch(version):
            raise ValueError("the Graph API version must look like v25.0")
        self.base_url = f"{graph_url.rstrip('/')}/{version}/"
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
            # TLS 1.2+, the certificate and host name verified (weflux.tls).
            verify=client_context(),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "weflux"},
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Self:
        """The client for `WEFLUX_META_GRAPH_URL` and `WEFLUX_META_GRAPH_VERSION`."""
        return cls(settings.meta_graph_url, settings.meta_graph_version, transport=transport)

    async def aclose(self) -> None:
        """Close the shared connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        """Use the client as an async context manager that closes it on exit."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the shared connection pool."""
        await self.aclose()

    async def phone_number_health(
        self, phone_number_id: str, access_token: str
    ) -> PhoneNumberHealth:
        """Read a number's quality rating, messaging limit, throughput and status."""
        _check_path_id(phone_number_id, "phone_number_id")
        body = await self._call(
            "phone_number_health",
            phone_number_id,
            access_token,
            "GET",
            phone_number_id,
            params={"fields": ",".join(HEALTH_FIELDS)},
        )
        throughput = body.get("throughput")
        limit = body.get("whatsapp_business_manager_messaging_limit")
        if isinstance(limit, dict):
            # Tolerate an object form of the limit field, e.g. {"current_limit": "TIER_2K"}.
            limit = limit.get("current_limit") or limit.get("tier")
        return PhoneNumberHealth(
            quality_rating=_quality(body.get("quality_rating")),
            messaging_limit_tier=_text(limit),
            throughput_level=_text(throughput.get("level"))
            if isinstance(throughput, dict)
            else None,
            display_phone_number=_text(body.get("display_phone_number")),
            verified_name=_text(body.get("verified_name")),
            status=_text(body.get("status")),
            name_status=_text(body.get("name_status")),
        )

    async def lists_phone_number(
        self, business_account_id: str, phone_number_id: str, access_token: str
    ) -> bool:
        """Whether `GET /{waba-id}/phone_numbers` lists the number (Meta's cursors followed).

        The `after` cursor is sent back to the same endpoint; `paging.next` is only read
        as "there is more" and never followed as a URL, so the host stays the configured
        one and the token stays in the header. At most PHONE_NUMBERS_MAX_PAGES pages.
        """
        _check_path_id(business_account_id, "business_account_id")
        _check_path_id(phone_number_id, "phone_number_id")
        params = {"fields": "id", "limit": str(PHONE_NUMBERS_PAGE_SIZE)}
        seen: set[str] = set()
        for _ in range(PHONE_NUMBERS_MAX_PAGES):
            body = await self._call(
                "list_phone_numbers",
                business_account_id,
                access_token,
                "GET",
                f"{business_account_id}/phone_numbers",
                params=params,
            )
            data = body.get("data")
            if isinstance(data, list) and any(
                isinstance(entry, dict) and entry.get("id") == phone_number_id for entry in data
            ):
                return True
            after = _next_cursor(body.get("paging"))
            if after is None or after in seen:
                return False
            seen.add(after)
            params = {**params, "after": after}
        log.warning(
            "stopped reading a business account's phone numbers after %d pages",
            PHONE_NUMBERS_MAX_PAGES,
            extra={"business_account_id": business_account_id},
        )
        return False

    async def message_templates(
        self, business_account_id: str, access_token: str
    ) -> list[TemplateInfo]:
        """Every template of a business account, all pages (`GET /{waba-id}/message_templates`).

        Cursors are followed as for `lists_phone_numbers` (the `after` cursor sent back to
        the configured host); at most TEMPLATES_MAX_PAGES pages. Entries without a name or
        language are skipped.
        """
        _check_path_id(business_account_id, "business_account_id")
        params = {"fields": ",".join(TEMPLATE_FIELDS), "limit": str(TEMPLATES_PAGE_SIZE)}
        seen: set[str] = set()
        found: list[TemplateInfo] = []
        for _ in range(TEMPLATES_MAX_PAGES):
            body = await self._call(
                "list_message_templates",
                business_account_id,
                access_token,
                "GET",
                f"{business_account_id}/message_templates",
                params=params,
            )
            data = body.get("data")
            for entry in data if isinstance(data, list) else []:
                template = _template(entry)
                if template is not None:
                    found.append(template)
            after = _next_cursor(body.get("paging"))
            if after is None or after in seen:
                return found
            seen.add(after)
            params = {**params, "after": after}
        log.warning(
            "stopped reading a business account's templates after %d pages",
            TEMPLATES_MAX_PAGES,
            extra={"business_account_id": business_account_id},
        )
        return found

    async def send_message(
        self, phone_number_id: str, access_token: str, payload: dict[str, Any]
    ) -> SentMessage:
        """Send one message (`POST /{phone-number-id}/messages`); returns Meta's wamid."""
        _check_path_id(phone_number_id, "phone_number_id")
        product = payload.get("messaging_product", "whatsapp")
        if product != "whatsapp":
            raise ValueError('the payload\'s messaging_product must be "whatsapp"')
        body = await self._call(
            "send_message",
            phone_number_id,
            access_token,
            "POST",
            f"{phone_number_id}/messages",
            json={**payload, "messaging_product": "whatsapp"},
        )
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, dict):
            first = {}
        message_id = _text(first.get("id"))
        if message_id is None:
            error = MetaApiError(
                code=None,
                subcode=None,
                title="Unexpected response",
                message="the send was answered without a message id; it may have been sent",
                fbtrace_id=None,
                http_status=200,
                kind=ErrorKind.PERMANENT,
            )
            self._log_failure("send_message", phone_number_id, error)
            raise error
        contacts = body.get("contacts")
        contact = contacts[0] if isinstance(contacts, list) and contacts else None
        return SentMessage(
            wa_message_id=message_id,
            wa_id=_text(contact.get("wa_id")) if isinstance(contact, dict) else None,
            message_status=_text(first.get("message_status")),
        )

    async def media_info(self, media_id: str, access_token: str) -> MediaInfo:
        """Where a received media file can be fetched (`GET /{media-id}`)."""
        _check_path_id(media_id, "media_id")
        body = await self._call("media_url", media_id, access_token, "GET", media_id)
        url = _text(body.get("url"))
        if url is None:
            error = MetaApiError(
                code=None,
                subcode=None,
                title="Unexpected response",
                message="the media was answered without a URL",
                fbtrace_id=None,
                http_status=200,
                kind=ErrorKind.RETRYABLE,
            )
            self._log_failure("media_url", media_id, error)
            raise error
        return MediaInfo(
            url=url,
            mime_type=_text(body.get("mime_type")),
            sha256=_text(body.get("sha256")),
            file_size=_integer(body.get("file_size")),
        )

    async def upload_media(
        self,
        phone_number_id: str,
        access_token: str,
        file: BinaryIO,
        *,
        mime_type: str,
        filename: str,
    ) -> str:
        """Upload a file for the number to send (`POST /{phone-number-id}/media`); its id."""
        _check_path_id(phone_number_id, "phone_number_id")
        body = await self._call(
            "upload_media",
            phone_number_id,
            access_token,
            "POST",
            f"{phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename, file, mime_type)},
        )
        media_id = _text(body.get("id"))
        if media_id is None:
            error = MetaApiError(
                code=None,
                subcode=None,
                title="Unexpected response",
                message="the upload was answered without a media id",
                fbtrace_id=None,
                http_status=200,
                kind=ErrorKind.RETRYABLE,
            )
            self._log_failure("upload_media", phone_number_id, error)
            raise error
        return media_id

    def media_host_allowed(self, url: str) -> bool:
        """Whether a media URL Meta answered may be fetched with the access token.

        Only on the Graph URL's own origin, or over https on Meta's media hosts: the
        token is never handed to any other server.
        """
        parts, graph = urlsplit(url), urlsplit(self.base_url)
        host = (parts.hostname or "").lower()
        if parts.username or parts.password or not host:
            return False
        if (parts.scheme, host, parts.port) == (graph.scheme, graph.hostname, graph.port):
            return True
        return parts.scheme == "https" and host.endswith(META_MEDIA_HOSTS)

    @asynccontextmanager
    async def media_stream(
        self, media_id: str, url: str, access_token: str
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The bytes of a media file at the URL `media_info` answered, as they arrive.

        The caller stops reading when the file is too large; leaving the block closes
        the connection. Raises MetaApiError (logged once) when the download fails.
        """
        if not self.media_host_allowed(url):
            error = MetaApiError(
                code=None,
                subcode=None,
                title="Media URL refused",
                message="the media URL is not on a Meta media host",
                fbtrace_id=None,
                http_status=200,
                kind=ErrorKind.PERMANENT,
            )
            self._log_failure("media_download", media_id, error)
            raise error
        headers = {"Authorization": f"Bearer {_check_token(access_token)}", "Accept": "*/*"}
        failure: MetaApiError | None = None
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if not response.is_success:
                    await response.aread()
                    failure = _error_from_response(response, access_token)
                else:
                    yield response.aiter_bytes()
        except httpx.TimeoutException as exc:
            failure = MetaUnavailable(
                title="Media download timed out",
                message=scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), access_token),
            )
        except httpx.RequestError as exc:
            failure = MetaUnavailable(
                title="Media download failed",
                message=scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), access_token),
            )
        if failure is not None:
            # Raised outside the except blocks: no httpx exception (holding the request
            # and its Authorization header) rides along as __context__.
            self._log_failure("media_download", media_id, failure)
            raise failure

    async def _call(
        self,
        operation: str,
        node_id: str,
        access_token: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, BinaryIO, str]] | None = None,
    ) -> dict[str, Any]:
        """Make one request; answer its JSON object or raise (and log once) a MetaApiError."""
        headers = {"Authorization": f"Bearer {_check_token(access_token)}"}
        error: MetaApiError
        try:
            response = await self._http.request(
                method, path, params=params, json=json, data=data, files=files, headers=headers
            )
        except httpx.TimeoutException as exc:
            error = MetaUnavailable(
                title="Cloud API timed out",
                message=scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), access_token),
            )
        except httpx.RequestError as exc:
            error = MetaUnavailable(
                title="Cloud API unreachable",
                message=scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), access_token),
            )
        else:
            if response.is_success:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    return body
                error = MetaApiError(
                    code=None,
                    subcode=None,
                    title="Unexpected response",
                    message="the Cloud API answered with a body that is not a JSON object",
                    fbtrace_id=_text(response.headers.get("x-fb-trace-id")),
                    http_status=response.status_code,
                    kind=ErrorKind.PERMANENT,
                )
            else:
                error = _error_from_response(response, access_token)
        # Raised outside the except blocks, so no httpx exception (which holds the
        # request and its Authorization header) rides along as __context__.
        self._log_failure(operation, node_id, error)
        raise error

    def _log_failure(self, operation: str, node_id: str, error: MetaApiError) -> None:
        """Log a failed call once, at WARNING, with Meta's identifiers as extras."""
        log.warning(
            "WhatsApp Cloud API %s failed: %s",
            operation,
            error,
            extra={
                "operation": operation,
                "node_id": node_id,  # the phone number or business account called
                "code": error.code,
                "subcode": error.subcode,
                "fbtrace_id": error.fbtrace_id,
                "http_status": error.http_status,
                "kind": error.kind.value,
            },
        )


def _template(entry: Any) -> TemplateInfo | None:
    """One entry of the templates edge, or None when it lacks a name or language."""
    if not isinstance(entry, dict):
        return None
    name, language = _text(entry.get("name")), _text(entry.get("language"))
    if name is None or language is None:
        return None
    body_text = None
    components = entry.get("components")
    for component in components if isinstance(components, list) else []:
        if isinstance(component, dict) and str(component.get("type", "")).upper() == "BODY":
            body_text = _text(component.get("text"))
            break
    return TemplateInfo(
        meta_template_id=_text(entry.get("id")),
        name=name[:512],
        language=language[:16],
        category=(_text(entry.get("category")) or "UNKNOWN").upper()[:32],
        status=(_text(entry.get("status")) or "UNKNOWN").upper()[:32],
        body_text=body_text,
    )


def _next_cursor(paging: Any) -> str | None:
    """The `after` cursor of a Graph API page that says there is a next one."""
    if not isinstance(paging, dict) or not paging.get("next"):
        return None
    cursors = paging.get("cursors")
    after = cursors.get("after") if isinstance(cursors, dict) else None
    return after if isinstance(after, str) and 0 < len(after) <= 1024 else None


def _error_from_response(response: httpx.Response, access_token: str) -> MetaApiError:
    """Turn a non-2xx answer into a MetaApiError, with or without Meta's error body."""
    status = response.status_code
    header_trace = _text(response.headers.get("x-fb-trace-id"))
    try:
        body = response.json()
    except ValueError:
        body = None
    details = body.get("error") if isinstance(body, dict) else None
    if not isinstance(details, dict):
        return MetaApiError(
            code=None,
            subcode=None,
            title=f"HTTP {status}",
            message=f"the Cloud API answered HTTP {status} without a Graph API error body",
            fbtrace_id=header_trace,
            http_status=status,
            kind=classify(None, status),
        )
    code = _integer(details.get("code"))
    raw_message = _text(details.get("message")) or ""
    error_data = details.get("error_data")
    data_details = _text(error_data.get("details")) if isinstance(error_data, dict) else None
    title = (
        _text(details.get("error_user_title"))
        or _MESSAGE_PREFIX.sub("", raw_message)
        or f"HTTP {status}"
    )
    message = data_details or _text(details.get("error_user_msg")) or raw_message or title
    return MetaApiError(
        code=code,
        subcode=_integer(details.get("error_subcode")),
        title=_clip(scrub(title, access_token)),
        message=_clip(scrub(message, access_token)),
        fbtrace_id=_text(details.get("fbtrace_id")) or header_trace,
        http_status=status,
        kind=classify(code, status),
    )
