"""A fake WhatsApp Cloud API for tests and local development.

A real Starlette app that answers like Meta's Graph API, errors included, switchable at
run time: register numbers, change their health, make the next calls fail or stall, and
read back every request it received. Run it on its own with

    python -m weflux.sandbox.cloud_api --port 8088 --number 106540352242922:TOKEN

and point `WEFLUX_META_GRAPH_URL` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "DEFAULT_BUSINESS_ACCOUNT_ID",
    "FakeCloudApi",
    "RecordedRequest",
    "SentRecord",
    "StoredMedia",
    "main",
    "running",
    "serve",
    "stop",
]

_MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
MEDIA_DOWNLOAD_PATH = "/whatsapp_business/attachments/"
_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}")
_NODE_ID = re.compile(r"[0-9]{1,32}")
_TRACE_ALPHABET = string.ascii_letters + string.digits
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_MESSAGE_TYPES = frozenset(
    {
        "audio",
        "contacts",
        "document",
        "image",
        "interactive",
        "location",
        "reaction",
        "sticker",
        "template",
        "text",
        "video",
    }
)
# Fields a GET without `fields=` returns, like Meta's defaults for a phone number node.
_DEFAULT_FIELDS = (
    "verified_name",
    "code_verification_status",
    "display_phone_number",
    "quality_rating",
    "platform_type",
    "throughput",
)
# Keyword names of `add_number`/`set_health` and the Graph API fields they set.
_HEALTH_FIELDS = {
    "display_phone_number": "display_phone_number",
    "verified_name": "verified_name",
    "quality_rating": "quality_rating",
    "messaging_limit_tier": "whatsapp_business_manager_messaging_limit",
    "throughput_level": "throughput",
    "status": "status",
    "name_status": "name_status",
    "code_verification_status": "code_verification_status",
    "platform_type": "platform_type",
}
_KNOWN_FIELDS = frozenset({"id", *_HEALTH_FIELDS.values()})
# The WhatsApp Business Account a number belongs to unless `add_number` says otherwise.
DEFAULT_BUSINESS_ACCOUNT_ID = "102290129340398"
# Meta's default page size of an edge, and the largest `limit` this fake honours.
_DEFAULT_PAGE_SIZE = 25
_MAX_PAGE_SIZE = 100
# Meta's short titles for the send errors worth simulating.
_TITLES = {
    1: "API Unknown",
    2: "API Service",
    4: "API Too Many Calls",
    100: "Invalid parameter",
    190: "Access token has expired",
    368: "Temporarily blocked for policies violations",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131016: "Service unavailable",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131051: "Unsupported message type",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132000: "Template Param Count Mismatch",
    132015: "Template is Paused",
}
_INVALID_TOKEN_MESSAGE = "Invalid OAuth access token - Cannot parse access token"  # noqa: S105


def new_fbtrace_id() -> str:
    """A random trace id shaped like Meta's (`A` and 22 letters or digits)."""
    return "A" + "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(22))


def new_wamid() -> str:
    """A fresh WhatsApp message id shaped like Meta's `wamid.HBgL…`."""
    raw = b"\x15\x02\x00\x11\x18\x12" + secrets.token_hex(9).upper().encode()
    return "wamid.HBgL" + base64.b64encode(raw).decode().rstrip("=")


@dataclass
class RecordedRequest:
    """One request the fake received, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # Authorization included, as received
    json: Any
    body: bytes = field(repr=False)
    client: tuple[str, int] | None
    status: int | None = None
    response: Any = None

    @property
    def authorization(self) -> str | None:
        """The Authorization header as received."""
        return self.headers.get("authorization")

    @property
    def fbtrace_id(self) -> str | None:
        """The fbtrace_id of the error this request was answered with, if any."""
        if isinstance(self.response, dict) and isinstance(self.response.get("error"), dict):
            trace = self.response["error"].get("fbtrace_id")
            return trace if isinstance(trace, str) else None
        return None


@dataclass(frozen=True)
class SentRecord:
    """A message the fake accepted."""

    phone_number_id: str
    wa_message_id: str
    to: str
    payload: dict[str, Any]


@dataclass
class _Number:
    access_token: str = field(repr=False)
    fields: dict[str, Any]
    business_account_id: str = DEFAULT_BUSINESS_ACCOUNT_ID


@dataclass(frozen=True)
class StoredMedia:
    """A media file the fake holds: one a contact sent (`add_media`), or an upload."""

    content: bytes = field(repr=False)
    mime_type: str
    sha256: str  # hex, as `GET /{media-id}` answers it
    declared_size: int  # what `file_size` says (a test may make it lie)
    phone_number_id: str | None = None  # uploads: the number it was uploaded to


@dataclass(frozen=True)
class _Failure:
    http_status: int
    error: dict[str, Any] | None = None  # Meta's error object, fbtrace_id added per answer
    body: bytes = b""
    content_type: str = "application/json"
    www_authenticate: str | None = None


@dataclass(eq=False)
class Hold:
    """A call held until `release()` (`FakeCloudApi.hold_next`): `reached` is set once it
    arrived, so a test acts while a caller waits on Meta."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


class FakeCloudApi:
    """State and behaviour of the fake Cloud API; `app()` serves it over HTTP."""

    def __init__(self) -> None:
        """Start empty: no numbers, no recorded requests, nothing planned."""
        self.numbers: dict[str, _Number] = {}
        self.requests: list[RecordedRequest] = []
        self.sent: list[SentRecord] = []
        self._failures: deque[_Failure] = deque()
        self._delays: deque[float] = deque()
        self._holds: deque[Hold] = deque()
        # Message templates per business account (`add_template`), in creation order.
        self.templates: dict[str, list[dict[str, Any]]] = {}
        # Media by id: received ones (`add_media`) and uploads (`POST /{number}/media`).
        self.media: dict[str, StoredMedia] = {}
        # Lower it to make `GET /{waba-id}/phone_numbers` answer in several pages.
        self.max_page_size = _MAX_PAGE_SIZE

    # -- set-up -------------------------------------------------------------------------

    def add_number(
        self,
        phone_number_id: str,
        *,
        access_token: str,
        business_account_id: str = DEFAULT_BUSINESS_ACCOUNT_ID,
        display_phone_number: str = "+1 555 0100",
        verified_name: str | None = "Weflux Test",
        quality_rating: str | None = "GREEN",
        messaging_limit_tier: str | None = "TIER_2K",
        throughput_level: str | None = "STANDARD",
        status: str | None = "CONNECTED",
        name_status: str | None = "APPROVED",
    ) -> None:
        """Register a number of a WhatsApp Business Account and the token that may use it.

        A token may list the numbers of every business account it holds a number of.
        None leaves a field absent.
        """
        if not _NODE_ID.fullmatch(phone_number_id) or not _NODE_ID.fullmatch(business_account_id):
            raise ValueError("phone_number_id and business_account_id must be 1 to 32 digits")
        self.numbers[phone_number_id] = _Number(
            access_token=access_token, fields={}, business_account_id=business_account_id
        )
        self.set_health(
            phone_number_id,
            display_phone_number=display_phone_number,
            verified_name=verified_name,
            quality_rating=quality_rating,
            messaging_limit_tier=messaging_limit_tier,
            throughput_level=throughput_level,
            status=status,
            name_status=name_status,
            code_verification_status="VERIFIED",
            platform_type="CLOUD_API",
        )

    def set_health(self, phone_number_id: str, **fields: str | None) -> None:
        """Change a number's fields (`quality_rating="RED"`, `messaging_limit_tier=None`…)."""
        number = self.numbers[phone_number_id]
        for name, value in fields.items():
            if name not in _HEALTH_FIELDS:
                raise TypeError(f"set_health() got an unexpected field {name!r}")
            graph_name = _HEALTH_FIELDS[name]
            if value is None:
                number.fields.pop(graph_name, None)
            elif graph_name == "throughput":
                number.fields[graph_name] = {"level": value}
            else:
                number.fields[graph_name] = value

    def add_template(
        self,
        business_account_id: str,
        name: str,
        *,
        language: str = "en_US",
        category: str = "UTILITY",
        status: str = "APPROVED",
        body: str | None = "Hello {{1}}",
    ) -> dict[str, Any]:
        """Register a message template of a business account (listed with paging)."""
        template: dict[str, Any] = {
            "id": str(10**15 + sum(len(t) for t in self.templates.values())),
            "name": name,
            "language": language,
            "category": category,
            "status": status,
            "components": [{"type": "BODY", "text": body}] if body is not None else [],
        }
        self.templates.setdefault(business_account_id, []).append(template)
        return template

    def add_media(self, content: bytes, mime_type: str, *, declared_size: int | None = None) -> str:
        """Hold a file a contact sent; its media id (for a webhook's `image.id`, …)."""
        media_id = str(10**15 + secrets.randbelow(10**15))
        self.media[media_id] = StoredMedia(
            content=content,
            mime_type=mime_type,
            sha256=hashlib.sha256(content).hexdigest(),
            declared_size=len(content) if declared_size is None else declared_size,
        )
        return media_id

    def set_access_token(self, phone_number_id: str, access_token: str) -> None:
        """Rotate (or revoke, by changing) the token that may use a number."""
        self.numbers[phone_number_id].access_token = access_token

    def set_business_account(self, phone_number_id: str, business_account_id: str) -> None:
        """Move a number to another WhatsApp Business Account."""
        self.numbers[phone_number_id].business_account_id = business_account_id

    def fail_next(
        self,
        count: int = 1,
        *,
        code: int,
        subcode: int | None = None,
        http_status: int = 400,
        message: str | None = None,
        title: str | None = None,
        details: str | None = None,
        error_type: str = "OAuthException",
    ) -> None:
        """Answer the next `count` calls with Meta's error body for `code`."""
        title = title or _TITLES.get(code, "Error")
        error: dict[str, Any] = {
            "message": message if message is not None else f"(#{code}) {title}",
            "type": error_type,
            "code": code,
        }
        if subcode is not None:
            error["error_subcode"] = subcode
        if code >= 1000:  # WhatsApp's own codes carry error_data
            error["error_data"] = {"messaging_product": "whatsapp", "details": details or title}
        elif details is not None:
            error["error_user_msg"] = details
        authenticate = (
            f'OAuth "Facebook Platform" "invalid_token" "{error["message"]}"'
            if code == 190
            else None
        )
        for _ in range(count):
            self._failures.append(_Failure(http_status, error=error, www_authenticate=authenticate))

    def fail_next_raw(
        self,
        count: int = 1,
        *,
        http_status: int = 500,
        body: str | bytes = "<html><body><h1>500 Internal Server Error</h1></body></html>",
        content_type: str = "text/html; charset=utf-8",
    ) -> None:
        """Answer the next `count` calls with an arbitrary body (say, a proxy's HTML page)."""
        raw = body.encode() if isinstance(body, str) else body
        for _ in range(count):
            self._failures.append(_Failure(http_status, body=raw, content_type=content_type))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Stall the next `count` calls; a stalled call ends early when its client leaves."""
        for _ in range(count):
            self._delays.append(seconds)

    def hold_next(self) -> Hold:
        """Hold the next call (after recording it) until the answer's `release()`."""
        hold = Hold()
        self._holds.append(hold)
        return hold

    def reset(self) -> None:
        """Forget numbers, recorded requests, sent messages and planned failures or delays."""
        self.numbers.clear()
        self.requests.clear()
        self.sent.clear()
        self._failures.clear()
        self._delays.clear()
        for hold in self._holds:
            hold.release()
        self._holds.clear()
        self.templates.clear()
        self.media.clear()
        self.max_page_size = _MAX_PAGE_SIZE

    # -- HTTP ---------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The Starlette app answering like `https://graph.facebook.com`."""
        return Starlette(
            routes=[
                # Where `GET /{media-id}` points (Meta's is lookaside.fbsbx.com).
                Route(MEDIA_DOWNLOAD_PATH, self._download_media, methods=["GET"]),
                Route("/{version}/{node_id}", self._get_node, methods=["GET"]),
                Route(
                    "/{version}/{node_id}/phone_numbers", self._list_phone_numbers, methods=["GET"]
                ),
                Route("/{version}/{node_id}/messages", self._post_message, methods=["POST"]),
                Route("/{version}/{node_id}/media", self._upload_media, methods=["POST"]),
                Route(
                    "/{version}/{node_id}/message_templates",
                    self._list_templates,
                    methods=["GET"],
                ),
                Route("/{path:path}", self._unknown_path, methods=_ALL_METHODS),
            ]
        )

    async def _get_node(self, request: Request) -> Response:
        record, early = await self._begin(request)
        if early is not None:
            return self._finish(record, early)
        version, node_id = request.path_params["version"], request.path_params["node_id"]
        if not _VERSION.fullmatch(version):
            return self._finish(record, _unknown_components(request.url.path))
        if node_id in self.media:
            return self._finish(record, self._media_info(request, node_id))
        number = self._authorize(request, node_id, "get")
        if isinstance(number, Response):
            return self._finish(record, number)
        names = _requested_fields(request)
        if isinstance(names, Response):
            return self._finish(record, names)
        return self._finish(record, _json(200, _node(node_id, number, names)))

    def _known_token(self, request: Request) -> bool:
        token = _token_of(request)
        return token is not None and any(n.access_token == token for n in self.numbers.values())

    def _media_info(self, request: Request, media_id: str) -> Response:
        """`GET /{media-id}`: a short-lived URL of the file, on this server."""
        if not self._known_token(request):
            return _invalid_token()
        media = self.media[media_id]
        url = f"{str(request.base_url).rstrip('/')}{MEDIA_DOWNLOAD_PATH}?" + urlencode(
            {"mid": media_id, "ext": str(int(time.time())), "hash": secrets.token_urlsafe(12)}
        )
        return _json(
            200,
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": media.mime_type,
                "sha256": media.sha256,
                "file_size": str(media.declared_size),
                "id": media_id,
            },
        )

    async def _download_media(self, request: Request) -> Response:
        """The file at the URL `GET /{media-id}` answered; the token is required here too."""
        record, early = await self._begin(request)
        if early is not None:
            return self._finish(record, early)
        if not self._known_token(request):
            return self._finish(record, _invalid_token())
        media = self.media.get(request.query_params.get("mid", ""))
        if media is None:
            return self._finish(record, _json(404, {"error": "not found"}))
        record.status = 200
        return Response(media.content, media_type=media.mime_type)

    async def _list_phone_numbers(self, request: Request) -> Response:
        """`GET /{waba-id}/phone_numbers`: Meta's cursor-paginated edge of a business account."""
        record, early = await self._begin(request)
        if early is not None:
            return self._finish(record, early)
        version, waba_id = request.path_params["version"], request.path_params["node_id"]
        if not _VERSION.fullmatch(version):
            return self._finish(record, _unknown_components(request.url.path))
        token = _token_of(request)
        if token is None or not any(n.access_token == token for n in self.numbers.values()):
            return self._finish(record, _invalid_token())
        listed = [
            (phone_id, number)
            for phone_id, number in self.numbers.items()
            if number.business_account_id == waba_id
        ]
        if not any(number.access_token == token for _, number in listed):
            return self._finish(record, _unsupported(waba_id, "get"))
        names = _requested_fields(request, default=("id", *_DEFAULT_FIELDS))
        if isinstance(names, Response):
            return self._finish(record, names)
        start = _cursor_position(request.query_params.get("after"))
        size = _page_size(request.query_params.get("limit"), self.max_page_size)
        if start is None or size is None:
            return self._finish(record, _error(400, code=100, message="(#100) Invalid parameter"))
        page = listed[start : start + size]
        answer: dict[str, Any] = {"data": [_node(pid, number, names) for pid, number in page]}
        if page:
            paging: dict[str, Any] = {
                "cursors": {"before": _cursor(start), "after": _cursor(start + len(page) - 1)}
            }
            if start + len(page) < len(listed):
                query = urlencode({"limit": size, "after": _cursor(start + len(page) - 1)})
                paging["next"] = f"{request.base_url}{version}/{waba_id}/phone_numbers?{query}"
            answer["paging"] = paging
        return self._finish(record, _json(200, answer))

    async def _list_templates(self, request: Request) -> Response:
        """`GET /{waba-id}/message_templates`: cursor-paginated like `phone_numbers`."""
        record, early = await self._begin(request)
        if early is not None:
            return self._finish(record, early)
        version, waba_id = request.path_params["version"], request.path_params["node_id"]
        if not _VERSION.fullmatch(version):
            return self._finish(record, _unknown_components(request.url.path))
        token = _token_of(request)
        if token is None or not any(n.access_token == token for n in self.numbers.values()):
            return self._finish(record, _invalid_token())
        if not any(
            n.access_token == token and n.business_account_id == waba_id
            for n in self.numbers.values()
        ):
            return self._finish(record, _unsupported(waba_id, "get"))
        listed = self.templates.get(waba_id, [])
        start = _cursor_position(request.query_params.get("after"))
        size = _page_size(request.query_params.get("limit"), self.max_page_size)
        if start is None or size is None:
            return self._finish(record, _error(400, code=100, message="(#100) Invalid parameter"))
        page = listed[start : start + size]
        answer: dict[str, Any] = {"data": [dict(t) for t in page]}
        if page:
            paging: dict[str, Any] = {
                "cursors": {"before": _cursor(start), "after": _cursor(start + len(page) - 1)}
            }
            if start + len(page) < len(listed):
                query = urlencode({"limit": size, "after": _cursor(start + len(page) - 1)})
                paging["next"] = f"{request.base_url}{version}/{waba_id}/message_templates?{query}"
            answer["paging"] = paging
        return self._finish(record, _json(200, answer))

    async def _post_message(self, request: Request) -> Response:
        record, number = await self._begin_posting(request)
        if isinstance(number, Response):
            return self._finish(record, number)
        node_id = request.path_params["node_id"]
        payload = record.json
        problem = _payload_problem(payload) or self._media_problem(node_id, payload)
        if problem is not None:
            return self._finish(record, _error(400, code=100, message=problem))
        to = str(payload["to"])
        message_id = new_wamid()
        self.sent.append(SentRecord(node_id, message_id, to, payload))
        accepted: dict[str, Any] = {"id": message_id}
        if payload.get("type") == "template":
            accepted["message_status"] = "accepted"
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": re.sub(r"\D", "", to)}],
            "messages": [accepted],
        }
        return self._finish(record, _json(200, answer))

    async def _begin_posting(self, request: Request) -> tuple[RecordedRequest, _Number | Response]:
        """Record a POST to a number's edge; the number, or the answer that refuses it."""
        record, early = await self._begin(request)
        if early is not None:
            return record, early
        if not _VERSION.fullmatch(request.path_params["version"]):
            return record, _unknown_components(request.url.path)
        return record, self._authorize(request, request.path_params["node_id"], "post")

    def _media_problem(self, phone_number_id: str, payload: dict[str, Any]) -> str | None:
        """A media send must name a file uploaded to the same number."""
        kind = payload.get("type")
        if kind not in _MEDIA_TYPES:
            return None
        media_id = payload[kind].get("id")
        media = self.media.get(media_id) if isinstance(media_id, str) else None
        if media is None or media.phone_number_id != phone_number_id:
            return f"(#100) Invalid parameter: {kind}['id'] is not a media id of this number"
        return None

    async def _upload_media(self, request: Request) -> Response:
        """`POST /{phone-number-id}/media`: a multipart upload; answers the media id."""
        record, number = await self._begin_posting(request)
        if isinstance(number, Response):
            return self._finish(record, number)
        node_id = request.path_params["node_id"]
        form = await request.form()
        file = form.get("file")
        if form.get("messaging_product") != "whatsapp":
            return self._finish(
                record, _error(400, code=100, message="(#100) messaging_product is required")
            )
        if file is None or isinstance(file, str):
            return self._finish(record, _error(400, code=100, message="(#100) file is required"))
        content = await file.read()
        mime_type = str(form.get("type") or file.content_type or "")
        media_id = str(10**15 + secrets.randbelow(10**15))
        self.media[media_id] = StoredMedia(
            content=content,
            mime_type=mime_type,
            sha256=hashlib.sha256(content).hexdigest(),
            declared_size=len(content),
            phone_number_id=node_id,
        )
        return self._finish(record, _json(200, {"id": media_id}))

    async def _unknown_path(self, request: Request) -> Response:
        record, early = await self._begin(request)
        if early is not None:
            return self._finish(record, early)
        return self._finish(record, _unknown_components(request.url.path))

    async def _begin(self, request: Request) -> tuple[RecordedRequest, Response | None]:
        """Record the request, apply a planned delay, and answer a planned failure."""
        body = await request.body()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={key.lower(): value for key, value in request.headers.items()},
            json=parsed,
            body=body,
            client=(request.client.host, request.client.port) if request.client else None,
        )
        self.requests.append(record)
        if self._holds:
            hold = self._holds.popleft()
            hold.reached.set()
            await hold.released.wait()
        if self._delays:
            await _stall(request, self._delays.popleft())
        if self._failures:
            failure = self._failures.popleft()
            if failure.error is not None:
                return record, _error_response(
                    failure.http_status, failure.error, failure.www_authenticate
                )
            return record, Response(
                failure.body,
                status_code=failure.http_status,
                media_type=failure.content_type,
                headers={"x-fb-trace-id": new_fbtrace_id()},
            )
        return record, None

    def _finish(self, record: RecordedRequest, response: Response) -> Response:
        """Note the answer on the record and return it."""
        record.status = response.status_code
        raw = bytes(response.body)
        try:
            record.response = json.loads(raw)
        except ValueError:
            record.response = raw.decode(errors="replace")
        return response

    def _authorize(self, request: Request, node_id: str, verb: str) -> _Number | Response:
        """The number, when the token is known and may use it; else Meta's error."""
        token = _token_of(request)
        if token is None or not any(n.access_token == token for n in self.numbers.values()):
            return _invalid_token()
        number = self.numbers.get(node_id)
        if number is None or number.access_token != token:
            return _unsupported(node_id, verb)
        return number


def _invalid_token() -> Response:
    """Meta's answer to an unknown or revoked access token."""
    return _error(
        401,
        code=190,
        message=_INVALID_TOKEN_MESSAGE,
        www_authenticate=f'OAuth "Facebook Platform" "invalid_token" "{_INVALID_TOKEN_MESSAGE}"',
    )


def _unsupported(node_id: str, verb: str) -> Response:
    """Meta's answer for a node that does not exist or that the token may not use."""
    message = (
        f"Unsupported {verb} request. Object with ID '{node_id}' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this "
        "operation. Please read the Graph API documentation at "
        "https://developers.facebook.com/docs/graph-api"
    )
    return _error(
        400,
        code=100,
        subcode=33,
        message=message,
        error_type="GraphMethodException",
        www_authenticate=f'OAuth "Facebook Platform" "invalid_request" "{message}"',
    )


def _requested_fields(
    request: Request, default: tuple[str, ...] = _DEFAULT_FIELDS
) -> list[str] | Response:
    """The `fields=` of a request (or the defaults), or Meta's error for an unknown one."""
    requested = request.query_params.get("fields")
    names = [n.strip() for n in requested.split(",")] if requested else list(default)
    names = [n for n in names if n]
    for name in names:
        if name not in _KNOWN_FIELDS:
            return _error(
                400,
                code=100,
                message=f"(#100) Tried accessing nonexisting field ({name}) on node "
                "type (WhatsAppBusinessPhoneNumber)",
            )
    return names


def _node(node_id: str, number: _Number, names: list[str]) -> dict[str, Any]:
    """A phone number node with the requested fields it has, and always its id."""
    answer = {name: number.fields[name] for name in names if name in number.fields}
    answer["id"] = node_id
    return answer


def _cursor(position: int) -> str:
    """An opaque cursor, like Meta's base64 ones."""
    return base64.urlsafe_b64encode(f"weflux-fake:{position}".encode()).decode()


def _cursor_position(cursor: str | None) -> int | None:
    """Where the page after `cursor` starts (0 without one); None for a cursor not ours."""
    if cursor is None:
        return 0
    try:
        prefix, _, position = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except ValueError:
        return None
    if prefix != "weflux-fake" or not position.isdigit():
        return None
    return int(position) + 1


def _page_size(limit: str | None, cap: int) -> int | None:
    """The page size a `limit=` asks for, at most `cap`; None when it is not a number."""
    if limit is None:
        return min(_DEFAULT_PAGE_SIZE, cap)
    if not limit.isdigit() or int(limit) < 1:
        return None
    return min(int(limit), cap)


def _error(
    http_status: int,
    *,
    code: int,
    message: str,
    subcode: int | None = None,
    error_type: str = "OAuthException",
    www_authenticate: str | None = None,
) -> Response:
    """Meta's error answer for a code and message."""
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    return _error_response(http_status, error, www_authenticate)


def _error_response(
    http_status: int, error: dict[str, Any], www_authenticate: str | None = None
) -> Response:
    """`{"error": {...}}` with a fresh fbtrace_id, also sent as `x-fb-trace-id`."""
    trace = new_fbtrace_id()
    headers = {"x-fb-trace-id": trace}
    if www_authenticate is not None:
        # Path segments reach messages decoded: keep the header to visible ASCII.
        headers["www-authenticate"] = re.sub(r"[^\x20-\x7e]", "?", www_authenticate)
    return _json(http_status, {"error": {**error, "fbtrace_id": trace}}, headers)


def _unknown_components(path: str) -> Response:
    """Meta's answer to a path it does not route."""
    return _error(400, code=2500, message=f"Unknown path components: {path}")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer with Meta's version header."""
    return JSONResponse(
        body, status_code=status, headers={"facebook-api-version": "v25.0", **(headers or {})}
    )


def _token_of(request: Request) -> str | None:
    """The access token of a request: the Bearer header, or (as Meta allows) the query."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and token.strip():
        return token.strip()
    return request.query_params.get("access_token") or None


def _payload_problem(payload: Any) -> str | None:
    """Meta's `(#100)` complaint about a send payload, or None when it is acceptable."""
    if not isinstance(payload, dict):
        return "(#100) Invalid parameter"
    if "messaging_product" not in payload:
        return "(#100) The parameter messaging_product is required."
    if payload["messaging_product"] != "whatsapp":
        return (
            "(#100) Param messaging_product must be one of {WHATSAPP} - got "
            f"{json.dumps(payload['messaging_product'])}."
        )
    to = payload.get("to")
    if not isinstance(to, str) or not to.strip():
        return "(#100) The parameter to is required."
    message_type = payload.get("type", "text")  # Meta's default type is text
    if message_type not in _MESSAGE_TYPES:
        allowed = ", ".join(sorted(t.upper() for t in _MESSAGE_TYPES))
        return f"(#100) Param type must be one of {{{allowed}}} - got {json.dumps(message_type)}."
    content = payload.get(message_type)
    if not isinstance(content, dict):
        return f"(#100) The parameter {message_type} is required."
    if message_type == "text" and not (isinstance(content.get("body"), str) and content["body"]):
        return "(#100) The parameter text['body'] is required."
    if message_type == "reaction":
        if not (isinstance(content.get("message_id"), str) and content["message_id"]):
            return "(#100) The parameter reaction['message_id'] is required."
        if not isinstance(content.get("emoji"), str):
            return "(#100) The parameter reaction['emoji'] is required."
    return None


async def _stall(request: Request, seconds: float) -> None:
    """Sleep, but stop as soon as the client has gone away."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(0.02, remaining))


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the host's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Do not take over SIGINT/SIGTERM: the embedding process owns them."""
        yield


async def serve(
    fake: FakeCloudApi, host: str = "127.0.0.1", port: int = 0
) -> tuple[uvicorn.Server, str, asyncio.Task[None]]:
    """Start the fake under uvicorn in this event loop; answer the server, URL and task."""
    config = uvicorn.Config(
        fake.app(),
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve(), name="fake-cloud-api")
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()  # re-raises a start-up failure such as a port in use
            raise RuntimeError("the fake Cloud API stopped before it started")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the fake Cloud API did not start in time")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    return server, f"http://{host}:{bound[1]}", task


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Stop a server started by `serve`."""
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=10)
    except TimeoutError:
        server.force_exit = True
        await task


@contextlib.asynccontextmanager
async def running(fake: FakeCloudApi, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the fake on a free port for the duration of the block; yield its base URL."""
    server, base_url, task = await serve(fake, host, port)
    try:
        yield base_url
    finally:
        await stop(server, task)


def main(argv: list[str] | None = None) -> None:
    """Run the fake on its own for local development."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="PHONE_NUMBER_ID:TOKEN",
        help="register a number and its access token (repeatable)",
    )
    args = parser.parse_args(argv)
    fake = FakeCloudApi()
    for entry in args.number:
        phone_number_id, sep, token = entry.partition(":")
        if not sep or not token:
            parser.error("--number takes PHONE_NUMBER_ID:TOKEN")
        fake.add_number(phone_number_id, access_token=token)
    uvicorn.run(fake.app(), host=args.host, port=args.port, lifespan="off")


if __name__ == "__main__":
    main()
