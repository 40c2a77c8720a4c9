"""Sandbox channels: the Cloud API answered in this process, statuses sent back as webhooks.

A `WhatsAppAccount` with `sandbox` set (the demo number of `weflux demo`) never reaches
Meta. Its sends, health refreshes and template sends go to `SandboxCloudApi`, a
`FakeCloudApi` served over an in-process ASGI transport (no socket is opened), which
answers a `wamid` in Meta's response shape or Meta's error shape. Each accepted send is
then followed by `sent`, `delivered` and `read` status webhooks, signed with the
channel's app secret and posted to the app's own `/webhooks/whatsapp/{webhookKey}`
(the real intake, in process), after the delays of `WEFLUX_SANDBOX_STATUS_DELAYS`.

It also holds the images a customer sends (`POST /sandbox/media`, the oldest dropped
past `MEDIA_KEEP_FILES` or `MEDIA_KEEP_BYTES`), which the worker's media download fetches
as from Meta. It knows the numbers of sandbox channels and any number a send names; a
`GET` of another id answers Meta's error 100/33 (no such object), a permanent failure.

Magic recipients (the number the business sends to):

- ending in `0131049`: accepted, `sent`, then `failed` with Meta's error 131049
  ("not delivered to maintain healthy ecosystem engagement");
- ending in `0131026`: refused at once with Meta's error 131026 (message undeliverable).

Production has no sandbox: `Runtime` builds none there, and a send or health refresh of
a sandbox channel is refused, naming why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from weflux.config import Settings
from weflux.sandbox import webhooks
from weflux.sandbox.cloud_api import (
    FakeCloudApi,
    SentRecord,
    _invalid_token,
    _Number,
    _token_of,
    _unsupported,
)
from weflux.whatsapp.client import CloudApiClient
from weflux.whatsapp.payloads import MEDIA_TYPES

log = logging.getLogger(__name__)

__all__ = [
    "FAILING_SUFFIX",
    "REFUSED_SUFFIX",
    "PhoneMessage",
    "Sandbox",
    "SandboxChannel",
    "SandboxCloudApi",
]

# Recipients ending so are answered with Meta's failures (see the module's docstring).
FAILING_SUFFIX = "0131049"
REFUSED_SUFFIX = "0131026"
SANDBOX_GRAPH_URL = "http://cloud-api.sandbox.invalid"
PRODUCTION_REFUSAL = (
    "a sandbox channel is answered by the in-process Cloud API sandbox, which production "
    "(WEFLUX_ENV=production) does not have: disconnect it and connect a real number"
)
_KEEP = 200  # recorded requests and sends kept (the fake records every one)
# Media files held (`POST /sandbox/media`, uploads of sends): the oldest are dropped past
# this many files or bytes, so a long-running development server does not grow.
MEDIA_KEEP_FILES = 20
MEDIA_KEEP_BYTES = 50 * 1024 * 1024
_DIGITS = re.compile(r"\D")
# The images a customer sends (`POST /sandbox/media`) and the page shows: not SVG.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


# What `syncMessageTemplates` finds on a sandbox channel: (name, language, category, body).
DEMO_TEMPLATES = (
    ("hello_world", "en_US", "UTILITY", "Hello from Weflux! Reply to this message to chat."),
    ("order_update", "en_US", "UTILITY", "Hi {{1}}, your order {{2}} is on its way."),
    ("spring_sale", "en_US", "MARKETING", "{{1}}, our spring sale starts today."),
)


@dataclass(frozen=True)
class SandboxChannel:
    """What the sandbox needs to post a channel's status webhooks."""

    phone_number_id: str
    business_account_id: str
    display_phone_number: str
    webhook_key: str
    app_secret: str = field(repr=False)


@dataclass
class PhoneMessage:
    """One message of a customer's phone in the sandbox: written by them or sent to them."""

    id: str
    direction: str  # "in" (the customer wrote it) or "out" (the business sent it)
    text: str  # a text's body, a file's caption, or what stands for the message
    status: str  # in: "accepted"; out: "accepted", then sent, delivered, read or failed
    error: int | None = None
    kind: str = "text"  # Meta's type: text, image, document, location, template…
    # A file: {"id", "mimeType", "filename", "url"}; `url` (GET /sandbox/media/{id}) when
    # the sandbox holds it and it is an image the page may show.
    media: dict[str, Any] | None = None
    location: dict[str, Any] | None = None  # {"latitude", "longitude", "name", "address"}
    reactions: dict[str, str] = field(default_factory=dict)  # "customer"/"business": emoji


def _reaction(payload: dict[str, Any]) -> tuple[str, str]:
    """The message a reaction names and its emoji ("" removes)."""
    reaction = payload.get("reaction") or {}
    return str(reaction.get("message_id", "")), str(reaction.get("emoji", ""))


class SandboxCloudApi(FakeCloudApi):
    """The fake Cloud API, where the sandbox's numbers are known and any token is accepted.

    `GET /{id}` of an id that is neither a held media file nor a sandbox channel's number
    answers Meta's error 100/33 (no such object), so a download of an unknown media id
    fails at once instead of being retried.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        """A fake that tells `sandbox` of every message it accepts."""
        super().__init__()
        self._sandbox = sandbox

    def _known_token(self, request: Request) -> bool:
        return _token_of(request) is not None  # any token may fetch the sandbox's media

    def _authorize(self, request: Request, node_id: str, verb: str) -> _Number | Response:
        token = _token_of(request)
        if token is None:
            return _invalid_token()
        if node_id not in self.numbers:
            channel = self._sandbox.channels.get(node_id)
            if channel is None and verb == "get" and node_id not in self._sandbox.numbers:
                return _unsupported(node_id, verb)
            # A send or upload names a number by its path: every number may send.
            self.add_number(
                node_id,
                access_token=token,
                business_account_id=channel.business_account_id if channel else "1",
                display_phone_number=channel.display_phone_number if channel else "+1 555 0100",
                verified_name="Weflux Demo",
                messaging_limit_tier="TIER_250",
            )
        number = self.numbers[node_id]
        number.access_token = token
        return number

    async def _list_phone_numbers(self, request: Request) -> Response:
        """A sandbox business account lists its channels' numbers for any token (a
        credentials update checks the new token so), like every other sandbox call."""
        if _token_of(request) is not None:
            waba_id = request.path_params["node_id"]
            for phone_id, channel in self._sandbox.channels.items():
                if channel.business_account_id == waba_id:
                    self._authorize(request, phone_id, "get")
        return await super()._list_phone_numbers(request)

    def add_media(self, content: bytes, mime_type: str, *, declared_size: int | None = None) -> str:
        """Hold a file a customer sends (`POST /sandbox/media`); the oldest are dropped."""
        media_id = super().add_media(content, mime_type, declared_size=declared_size)
        self._trim_media()
        return media_id

    async def _upload_media(self, request: Request) -> Response:
        response = await super()._upload_media(request)
        self._trim_media()
        return response

    def _trim_media(self) -> None:
        """Drop the oldest files past `MEDIA_KEEP_FILES` or `MEDIA_KEEP_BYTES` (not the newest)."""
        total = sum(len(media.content) for media in self.media.values())
        while len(self.media) > 1 and (
            len(self.media) > MEDIA_KEEP_FILES or total > MEDIA_KEEP_BYTES
        ):
            oldest = next(iter(self.media))
            total -= len(self.media.pop(oldest).content)

    async def _list_templates(self, request: Request) -> Response:
        """Every sandbox business account lists the demo's templates (`DEMO_TEMPLATES`)."""
        waba_id = request.path_params["node_id"]
        for channel in list(self._sandbox.channels.values()):
            if channel.business_account_id == waba_id and _token_of(request) is not None:
                self._authorize(request, channel.phone_number_id, "get")
        if waba_id not in self.templates:
            for name, language, category, body in DEMO_TEMPLATES:
                self.add_template(waba_id, name, language=language, category=category, body=body)
        return await super()._list_templates(request)

    async def _post_message(self, request: Request) -> Response:
        del self.requests[:-_KEEP]
        del self.sent[:-_KEEP]
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = await request.json()
        to = _DIGITS.sub("", str(payload.get("to", ""))) if isinstance(payload, dict) else ""
        if to.endswith(REFUSED_SUFFIX):
            self.fail_next(code=131026, details="Message Undeliverable.")
        response = await super()._post_message(request)
        if response.status_code == 200 and self.sent:
            # No await since the fake appended it: the last send is this one.
            self._sandbox.accepted(self.sent[-1])
        return response


class Sandbox:
    """The in-process Cloud API of sandbox channels and the status webhooks it sends."""

    def __init__(self, settings: Settings) -> None:
        """A sandbox answering at `WEFLUX_META_GRAPH_VERSION`, with the configured delays."""
        self.delays = settings.sandbox_status_delays
        self.channels: dict[str, SandboxChannel] = {}
        # Sandbox numbers without an app secret (no statuses to post), known all the same.
        self.numbers: set[str] = set()
        self.api = SandboxCloudApi(self)
        self.client = CloudApiClient(
            SANDBOX_GRAPH_URL,
            settings.meta_graph_version,
            transport=httpx.ASGITransport(app=self.api.app()),
        )
        self._intake: ASGIApp | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned = False
        # Each customer's phone (digits only): what they wrote and what they were sent.
        self.phones: dict[str, list[PhoneMessage]] = {}
        self.names: dict[str, str] = {}
        self.page_channel: SandboxChannel | None = None  # the channel the /sandbox page writes to

    def shown(self, wa_message_id: str, direction: str, payload: dict[str, Any]) -> PhoneMessage:
        """What a customer's phone shows of a message (Meta's shape: `type` and its object)."""
        kind = str(payload.get("type", "text"))
        content = payload.get(kind)
        if not isinstance(content, dict):
            content = {}
        shown = PhoneMessage(wa_message_id, direction, "", "accepted", kind=kind)
        if kind == "text":
            shown.text = str(content.get("body", ""))
        elif kind == "template":
            shown.text = f"[template {content.get('name', '')}]"
        elif kind == "reaction":
            emoji = str(content.get("emoji", ""))
            shown.text = f"[reacted {emoji}]" if emoji else "[reaction removed]"
        elif kind in MEDIA_TYPES:
            media_id = str(content.get("id", ""))
            held = self.api.media.get(media_id)
            mime_type = held.mime_type if held else str(content.get("mime_type", ""))
            shown.text = str(content.get("caption", ""))
            shown.media = {
                "id": media_id,
                "mimeType": mime_type,
                "filename": content.get("filename"),
                "url": f"/sandbox/media/{media_id}" if held and mime_type in IMAGE_TYPES else None,
            }
        elif kind == "location":
            shown.location = {
                key: content.get(key) for key in ("latitude", "longitude", "name", "address")
            }
        else:
            shown.text = f"[{kind}]"
        return shown

    def _react(self, number: str, payload: dict[str, Any], who: str) -> bool:
        """Show a reaction on the message it names, if this phone has it; whether it did."""
        target_id, emoji = _reaction(payload)
        target = self._find(number, target_id)
        if target is None:
            return False
        if emoji:
            target.reactions[who] = emoji
        else:
            target.reactions.pop(who, None)
        return True

    def _show(self, number: str, message: PhoneMessage) -> None:
        thread = self.phone(number)
        thread.append(message)
        del thread[:-_KEEP]

    def phone(self, number: str) -> list[PhoneMessage]:
        """The messages of one customer's phone (digits only), oldest first."""
        return self.phones.setdefault(_DIGITS.sub("", number), [])

    def _find(self, number: str, wa_message_id: str) -> PhoneMessage | None:
        return next((m for m in self.phone(number) if m.id == wa_message_id), None)

    def attach(self, app: ASGIApp) -> None:
        """The app whose webhook intake receives the statuses (`weflux serve`'s own)."""
        self._intake = app

    def register(self, channel: SandboxChannel) -> None:
        """Know where (and with which secret) to post this channel's statuses."""
        self.channels[channel.phone_number_id] = channel

    def know(self, phone_number_id: str) -> None:
        """Answer for a sandbox channel's number, even one without an app secret."""
        self.numbers.add(phone_number_id)

    def accepted(self, record: SentRecord) -> None:
        """Start delivering the statuses of an accepted send."""
        # A reaction shows on the message it names (else as a line of its own).
        if record.payload.get("type") != "reaction" or not self._react(
            record.to, record.payload, "business"
        ):
            self._show(record.to, self.shown(record.wa_message_id, "out", record.payload))
        task = asyncio.get_running_loop().create_task(
            self._statuses(record), name=f"sandbox-statuses-{record.wa_message_id[-8:]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _statuses(self, record: SentRecord) -> None:
        recipient = _DIGITS.sub("", record.to)
        states: list[tuple[str, list[dict[str, Any]] | None]] = [
            ("sent", None),
            ("delivered", None),
            ("read", None),
        ]
        if recipient.endswith(FAILING_SUFFIX):
            failure = webhooks.error(
                131049,
                "This message was not delivered to maintain healthy ecosystem engagement.",
                "The message failed to be delivered (a sandbox recipient ending in 0131049).",
            )
            states = [("sent", None), ("failed", [failure])]
        for (state, errors), delay in zip(states, self.delays, strict=False):
            await asyncio.sleep(delay)
            try:
                await self.post_status(record, state, recipient, errors)
            except Exception:
                log.exception(
                    "sandbox: could not deliver a status webhook", extra={"status": state}
                )
                return

    async def post_status(
        self,
        record: SentRecord,
        state: str,
        recipient: str,
        errors: list[dict[str, Any]] | None = None,
    ) -> int | None:
        """Post one signed status webhook through the intake; answer its HTTP status."""
        channel = self.channels.get(record.phone_number_id)
        if channel is None or self._intake is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "sandbox: statuses are not delivered: they need the worker inside "
                    "`weflux serve` (the sandbox posts them to that app's webhook intake)"
                )
            return None
        status = webhooks.status(record.wa_message_id, state, recipient, errors=errors)
        change = webhooks.messages_change(
            channel.phone_number_id, channel.display_phone_number, statuses=[status]
        )
        code = await self.post_webhook(channel, change)
        if code != 200:
            log.warning(
                "sandbox: the intake refused a status webhook",
                extra={"status": state, "http_status": code},
            )
        elif (shown := self._find(recipient, record.wa_message_id)) is not None:
            shown.status = state
            shown.error = int(errors[0]["code"]) if errors else None
        return code

    async def post_webhook(self, channel: SandboxChannel, change: dict[str, Any]) -> int | None:
        """Post one signed change of `channel` through the intake; answer its HTTP status."""
        if self._intake is None:
            return None
        raw = webhooks.encode(webhooks.body(channel.business_account_id, change))
        transport = httpx.ASGITransport(app=self._intake, client=("127.0.0.1", 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.local") as http:
            response = await http.post(
                f"/webhooks/whatsapp/{channel.webhook_key}",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": webhooks.sign(raw, channel.app_secret),
                },
            )
        return response.status_code

    async def customer_writes(
        self, channel: SandboxChannel, number: str, name: str, kind: str, content: dict[str, Any]
    ) -> tuple[str, int | None]:
        """A customer's message to `channel` (Meta's `kind` and its object, as `weflux
        simulate` builds them), as Meta's webhook: its wamid and the intake's answer."""
        sender = _DIGITS.sub("", number)
        wamid = webhooks.new_wamid()
        change = webhooks.messages_change(
            channel.phone_number_id,
            channel.display_phone_number,
            contacts=[webhooks.contact(sender, name)],
            messages=[webhooks.inbound(wamid, sender, kind, content)],
        )
        code = await self.post_webhook(channel, change)
        if code == 200:
            self.names[sender] = name
            payload = {"type": kind, kind: content}
            if kind != "reaction" or not self._react(sender, payload, "customer"):
                self._show(sender, self.shown(wamid, "in", payload))
        return wamid, code

    async def aclose(self) -> None:
        """Stop pending status deliveries and close the client."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
