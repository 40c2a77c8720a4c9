"""`GET /sandbox`: a page playing the customer's phone for sandbox channels (development only).

Unauthenticated development tools, mounted only when `WEFLUX_ENV=development`, and
answering 404 when the runtime has no sandbox. They touch only sandbox channels: a
customer's message is built with Meta's shapes (`weflux.sandbox.webhooks`), signed with
the demo channel's app secret and posted through the real intake, as `weflux simulate`
does; the business's messages come from what the sandbox recorded of its sends and the
statuses it posted.

- `GET /sandbox`: the page (`static/sandbox.html`), `/sandbox/sandbox.js` and
  `/sandbox/sandbox.css` its script and style (no inline code: a strict policy);
- `GET /sandbox/contacts`: the customers the sandbox has seen;
- `POST /sandbox/messages` `{"phone", "name"}` and one of `"text"`, `"image"` (a media id
  of `POST /sandbox/media`, with `"caption"`), `"location"` ("LAT,LONG") or `"reaction"`
  (an emoji, "" removes; with `"toMessage"`, a wamid of this phone): the customer sends it,
  built as `weflux simulate message` builds it (`simulate.customer_content`);
- `GET /sandbox/messages?phone=`: that phone's messages, each with its latest status, its
  file, location and reactions;
- `POST /sandbox/media`: the raw bytes of an image a customer sends (`Content-Type:
  image/jpeg`, `image/png` or `image/webp`, matching the bytes; at most 5 MB), held by the
  sandbox's Cloud API; answers `{"id", "sha256"}` (base64) for an image webhook, whose
  download then succeeds (`weflux simulate message --image` posts here first);
- `GET /sandbox/media/{id}`: an image the sandbox holds (a customer's, or one the business
  sent), for the page's thread; other types are not served (the page shows their name).

Unauthenticated, so guarded against DNS rebinding: they answer only when the `Host` header
names this machine as a developer reaches it (`localhost`, a `*.localhost` name, an IP
address) or a host of the allowed origins or `WEFLUX_APP_URL`. A name an attacker
controls that resolves to 127.0.0.1 gets 403 `FORBIDDEN`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import col, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from weflux.api.validation import read_body
from weflux.crypto.fields import open_secret
from weflux.db import maintenance_database
from weflux.errors import ErrorCode, WefluxError, error_response
from weflux.media.detect import HEAD_BYTES, detect
from weflux.models import WhatsAppAccount
from weflux.runtime import runtime_of
from weflux.sandbox.channels import IMAGE_TYPES, Sandbox, SandboxChannel
from weflux.sandbox.simulate import MAX_IMAGE_BYTES, ImageFile, SimulateError, customer_content
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER, e164

STATIC = Path(__file__).parent / "static"
PAGE_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",  # the images of the thread: GET /sandbox/media/{id}
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
NO_STORE = {"Cache-Control": "no-store"}
# GET reads any thread the sandbox holds (one the inbox wrote to); POST asks the one rule.
_PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{5,20}$")
MAX_TEXT = 4096
MAX_CAPTION = 1024  # Meta's limit for a media caption
MAX_EMOJI = 16  # one emoji, however many code points it is built of
# A customer's message as JSON: a text or caption of its most characters, each escaped
# (`\uXXXX\uXXXX`, 12 bytes), fits with room to spare.
MAX_MESSAGE_BYTES = 64 * 1024
CONTENT_KEYS = ("text", "image", "location", "reaction")


def _trusted_host(request: Request) -> bool:
    """Whether the `Host` header is one a developer's browser sends, not a rebound name."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True  # an address typed by hand: DNS rebinding needs a name
    settings = runtime_of(request.app).settings
    configured = [*settings.origins, settings.app_base_url]
    return host in {urlsplit(url).hostname for url in configured}


def _sandbox(request: Request) -> Sandbox | None:
    return runtime_of(request.app).sandbox


def _open(request: Request) -> Sandbox | Response:
    """The sandbox, or 404 without one, or 403 for a `Host` not this machine's (rebinding)."""
    sandbox = _sandbox(request)
    if sandbox is None:
        return _not_found()
    if not _trusted_host(request):
        return error_response(
            403,
            ErrorCode.FORBIDDEN,
            "the sandbox answers only on localhost, an IP address or an allowed origin's host",
            headers=NO_STORE,
        )
    return sandbox


def _not_found() -> Response:
    return error_response(404, ErrorCode.NOT_FOUND, "Not Found", headers=NO_STORE)


def _static(name: str, media_type: str) -> Any:
    async def serve(request: Request) -> Response:
        if isinstance(refusal := _open(request), Response):
            return refusal
        body = (STATIC / name).read_bytes()
        return Response(body, media_type=media_type, headers={"Content-Security-Policy": PAGE_CSP})

    return serve


async def _channel(request: Request, sandbox: Sandbox) -> SandboxChannel | None:
    """The first live sandbox channel (the demo number), registered with the sandbox."""
    if sandbox.page_channel is not None:
        return sandbox.page_channel
    runtime = runtime_of(request.app)
    # As `weflux simulate` reads it: the owner's connection of the local settings (once).
    db = await maintenance_database(runtime.settings.migration_url)
    try:
        async with db.session(all_workspaces="sandbox page: the demo number") as session:
            statement = (
                select(WhatsAppAccount)
                .where(col(WhatsAppAccount.sandbox).is_(True))
                .where(col(WhatsAppAccount.disconnected_at).is_(None))
                .order_by(col(WhatsAppAccount.created_at))
            )
            account = (await session.exec(statement)).first()
    finally:
        await db.dispose()
    if account is None:
        return None
    secret = open_secret(runtime.keyring, account, "app_secret_enc")
    if secret is None:
        return None
    channel = SandboxChannel(
        phone_number_id=account.phone_number_id,
        business_account_id=account.business_account_id,
        display_phone_number=account.display_phone_number,
        webhook_key=account.webhook_key,
        app_secret=secret.reveal(),
    )
    sandbox.register(channel)
    sandbox.page_channel = channel
    return channel


async def contacts(request: Request) -> Response:
    """The customers the sandbox knows: those who wrote and those the business sent to."""
    sandbox = _open(request)
    if isinstance(sandbox, Response):
        return sandbox
    listed = [
        {"phone": "+" + number, "name": sandbox.names.get(number, "")} for number in sandbox.phones
    ]
    return JSONResponse({"contacts": listed}, headers=NO_STORE)


async def messages(request: Request) -> Response:
    """One phone's messages (GET ?phone=), or the customer writes one (POST)."""
    sandbox = _open(request)
    if isinstance(sandbox, Response):
        return sandbox
    if request.method == "GET":
        phone = request.query_params.get("phone", "")
        if not _PHONE.match(phone):
            return _bad("phone", "a phone number, e.g. +15551230001")
        # As POST keys it (`+44 (0)20…` is 4420…), else as typed.
        held = sandbox.phone(e164(phone) or phone)
        shown = [asdict(message) for message in held]
        return JSONResponse({"messages": shown}, headers=NO_STORE)
    # JSON only: another site's page cannot post it without a CORS preflight, which fails.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _bad("body", "Content-Type: application/json")
    try:
        body = json.loads(await read_body(request, MAX_MESSAGE_BYTES))
    except WefluxError as error:
        return error_response(error.status, error.code, error.message, headers=NO_STORE)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
        body = None
    if not isinstance(body, dict):
        return _bad("body", 'a JSON object {"phone", "name", "text"} (or "image", …)')
    phone, name = (str(body.get(key) or "").strip() for key in ("phone", "name"))
    number = e164(phone)  # the inbox's one rule, so the customer can be written to
    if number is None:
        return _bad("phone", INVALID_PHONE_NUMBER)
    digits = number.removeprefix("+")
    content = _content(body, sandbox, digits)
    if isinstance(content, Response):
        return content
    channel = await _channel(request, sandbox)
    if channel is None:
        return error_response(
            409,
            ErrorCode.CONFLICT,
            "no sandbox channel with an app secret: run `weflux demo`",
            headers=NO_STORE,
        )
    wamid, code = await sandbox.customer_writes(
        channel, digits, name[:100] or f"Customer {digits[-4:]}", *content
    )
    if code != 200:
        return error_response(
            502, ErrorCode.CONFLICT, f"the webhook intake answered {code}", headers=NO_STORE
        )
    return JSONResponse({"id": wamid}, headers=NO_STORE)


def _content(
    body: dict[str, Any], sandbox: Sandbox, digits: str
) -> tuple[str, dict[str, Any]] | Response:
    """What the customer sends (one of `text`, `image`, `location`, `reaction`), built as
    `weflux simulate message` builds it; or the refusal."""
    given = [key for key in CONTENT_KEYS if body.get(key) is not None]
    if len(given) != 1:
        return _bad("body", "one of " + ", ".join(CONTENT_KEYS))
    key = given[0]
    value = body[key]
    if not isinstance(value, str):
        return _bad(key, "a string")
    image, caption = None, None
    if key == "text":
        value = value.strip()
        if not value or len(value) > MAX_TEXT:
            return _bad("text", f"1 to {MAX_TEXT} characters")
    elif key == "image":
        held = sandbox.api.media.get(value)
        if held is None or held.phone_number_id is not None:
            return _bad("image", "no image the sandbox holds has this id: upload it again")
        caption = str(body.get("caption") or "").strip() or None
        if caption is not None and len(caption) > MAX_CAPTION:
            return _bad("caption", f"at most {MAX_CAPTION} characters")
        image = ImageFile(held.content, held.mime_type, value)
    elif key == "reaction":
        if len(value) > MAX_EMOJI:
            return _bad("reaction", "one emoji, or empty to remove")
        target = str(body.get("toMessage") or "")
        if not any(message.id == target for message in sandbox.phones.get(digits, [])):
            return _bad("toMessage", "the id of a message on this phone")
    try:
        return customer_content(
            text=value if key == "text" else None,
            image=image,
            caption=caption,
            location=value if key == "location" else None,
            reaction=value if key == "reaction" else None,
            to_message=str(body.get("toMessage") or ""),
        )
    except SimulateError as error:
        return _bad(key, str(error))


async def media(request: Request) -> Response:
    """A customer's image: held by the sandbox's Cloud API, for an image webhook to name."""
    sandbox = _open(request)
    if isinstance(sandbox, Response):
        return sandbox
    # Image types only: not a simple (form) type, so another site's page cannot post it
    # without a CORS preflight, which fails.
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared not in IMAGE_TYPES:
        return error_response(
            415,
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: " + ", ".join(IMAGE_TYPES),
            headers=NO_STORE,
        )
    try:
        raw = await read_body(request, MAX_IMAGE_BYTES)
    except WefluxError as error:
        return error_response(error.status, error.code, error.message, headers=NO_STORE)
    if not raw:
        return _bad("body", "the image's bytes (1 byte to 5 MB)")
    found = detect(raw[:HEAD_BYTES], None)
    if found is None or found.mime_type != declared:
        return _bad("body", f"the bytes are not {declared} (by their first bytes)")
    media_id = sandbox.api.add_media(raw, declared)
    sha256 = base64.b64encode(hashlib.sha256(raw).digest()).decode()
    return JSONResponse({"id": media_id, "sha256": sha256}, headers=NO_STORE)


async def held_image(request: Request) -> Response:
    """An image the sandbox holds (a customer's, or one the business sent), for the page."""
    sandbox = _open(request)
    if isinstance(sandbox, Response):
        return sandbox
    held = sandbox.api.media.get(request.path_params["media_id"])
    if held is None or held.mime_type not in IMAGE_TYPES:
        return _not_found()
    headers = {**NO_STORE, "Content-Security-Policy": "default-src 'none'; sandbox"}
    return Response(held.content, media_type=held.mime_type, headers=headers)


def _bad(field: str, message: str) -> Response:
    return error_response(
        400,
        ErrorCode.BAD_REQUEST,
        f"{field}: {message}",
        details=[{"field": field, "message": message}],
        headers=NO_STORE,
    )


routes = [
    Route("/sandbox", _static("sandbox.html", "text/html; charset=utf-8"), methods=["GET"]),
    Route("/sandbox/sandbox.js", _static("sandbox.js", "text/javascript"), methods=["GET"]),
    Route("/sandbox/sandbox.css", _static("sandbox.css", "text/css"), methods=["GET"]),
    Route("/sandbox/contacts", contacts, methods=["GET"]),
    Route("/sandbox/messages", messages, methods=["GET", "POST"]),
    Route("/sandbox/media", media, methods=["POST"]),
    Route("/sandbox/media/{media_id}", held_image, methods=["GET"]),
]
