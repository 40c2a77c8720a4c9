"""`/webhooks/whatsapp[/{webhookKey}]`: Meta's handshake and notifications.

A POST is verified (HMAC-SHA256 of the raw bytes, constant time) before anything is
parsed or stored, then written durably, then answered 200; if the write fails the
answer is 503 so that Meta retries. While the process has room, the event is stored and
processed in one transaction before the answer; if processing fails, or the process is
busy, the event is stored as it came and processed later (from the bounded queue of
`weflux.services.webhook_queue.WebhookIntake`, else by the worker's sweep).

Failed proofs (a wrong verify token, a bad signature) are counted per client IP and
per webhook URL; once either has spent its limit the answer is 429 before any secret
is compared. Successes never count, so Meta's deliveries are never throttled by their
own volume.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from weflux.api.validation import read_body
from weflux.auth import crossings
from weflux.auth.scoping import use_workspace
from weflux.client_ip import client_ip
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import DecryptionError
from weflux.db import begin_read_only
from weflux.errors import PayloadTooLarge, WefluxError
from weflux.models import WhatsAppAccount
from weflux.runtime import Runtime, runtime_of
from weflux.services import ingest, webhook_queue
from weflux.services.audit import RequestMeta
from weflux.throttle.ratelimit import RateLimiter, per_ip

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024
PLATFORM_KEY = "platform"  # the bare URL's key in the failure limits
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")


def _text(status: int, body: str) -> PlainTextResponse:
    return PlainTextResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class _Channel:
    """What the URL says about whose secrets verify the request. Cached: the number's ids
    only, nothing of its row that a write may change without evicting it (its health,
    quality, status: weflux.services.channel_cache.QUIET_COLUMNS)."""

    def __init__(
        self, account: crossings.Owned | None, app_secret: str | None, verify_token: str | None
    ):
        self.account = account
        self.app_secret = app_secret
        self.verify_token = verify_token

    def names(self) -> list[uuid.UUID]:
        """The number it is built from (evicted by that number's changes)."""
        return [self.account.id] if self.account else []

    @property
    def limit_key(self) -> str:
        return str(self.account.id) if self.account else PLATFORM_KEY


class _FailureLimits:
    """Failed proofs of one kind ("verify" or "signature") per client IP and webhook URL."""

    def __init__(self, request: Request, runtime: Runtime, proof: str) -> None:
        self.limiter: RateLimiter = runtime.limiter
        self.ip = client_ip(request, runtime.trusted_proxies)
        self.proof = proof

    def _per_ip(self) -> list[tuple[str, str]]:
        return [(f"webhook_{self.proof}_ip", per_ip(self.ip))]

    def _per_url(self, channel: _Channel) -> list[tuple[str, str]]:
        return [(f"webhook_{self.proof}_key", channel.limit_key)]

    async def refusal(self, channel: _Channel | None = None) -> Response | None:
        """429 when the client IP (or, given a channel, its URL) has no failure left."""
        for name, key in self._per_url(channel) if channel else self._per_ip():
            decision = await self.limiter.test(name, key)
            if not decision.allowed:
                response = _text(429, "Too many failed attempts")
                response.headers["Retry-After"] = str(decision.retry_after)
                return response
        return None

    async def failed(self, channel: _Channel) -> None:
        for name, key in self._per_ip() + self._per_url(channel):
            await self.limiter.hit(name, key)


def _platform_secret(runtime: Runtime) -> str | None:
    secret = runtime.settings.meta_app_secret
    return secret.get_secret_value() if secret else None


async def _channel(request: Request, runtime: Runtime) -> _Channel | Response:
    settings = runtime.settings
    platform_token = (
        settings.meta_verify_token.get_secret_value() if settings.meta_verify_token else None
    )
    key = request.path_params.get("webhook_key")
    if key is None:
        return _Channel(None, _platform_secret(runtime), platform_token)
    # A key longer than any, or whose digest no live key has: no read (services.live_keys).
    if len(key) > 64 or not runtime.live_keys.may_be_live(key):
        return _text(404, "Not found")
    try:
        # An unknown key is remembered too: posts to it read the database once, not each.
        channel: _Channel | None = await runtime.channel_cache.get_or_load(
            ("channel", key),
            lambda: _load_channel(runtime, key),
            remember_miss=True,
            names=_Channel.names,
        )
    except _SecretsUnusable:
        return _text(503, "Unavailable")
    return channel if channel is not None else _text(404, "Not found")


class _SecretsUnusable(Exception):
    """A channel's secrets cannot be decrypted (logged; never cached)."""


async def _load_channel(runtime: Runtime, key: str) -> _Channel | None:
    """The live channel a keyed URL names, its secrets decrypted; cached per process by
    `runtime.channel_cache` until any number changes (weflux.services.channel_cache)."""
    async with runtime.db.session() as s:
        # A reader: on SQLite no write lock, so lookups (an unknown key's, each a miss
        # when the keys are random) never queue behind or hold up the writers.
        await begin_read_only(s)
        named = await crossings.webhook_channel(s, key)
        account = None
        if named is not None:
            await use_workspace(s, named.org_id)
            account = await s.get(WhatsAppAccount, named.id)
    if account is None:
        return None
    keyring = runtime.keyring
    try:
        app_secret = open_secret(keyring, account, "app_secret_enc")
        verify_token = open_secret(keyring, account, "webhook_verify_token_enc")
    except DecryptionError as error:
        log.error("channel secrets unusable", extra={"account": str(account.id), "why": str(error)})
        raise _SecretsUnusable from None
    # A channel without its own app secret is served by the platform's Meta app.
    return _Channel(
        crossings.Owned(account.org_id, account.id),
        app_secret.reveal() if app_secret else _platform_secret(runtime),
        verify_token.reveal() if verify_token else None,
    )


async def handshake(request: Request) -> Response:
    """Meta's subscription check: echo `hub.challenge` for the right verify token."""
    runtime = runtime_of(request)
    limits = _FailureLimits(request, runtime, "verify")
    if refusal := await limits.refusal():
        return refusal
    channel = await _channel(request, runtime)
    if isinstance(channel, Response):
        return channel
    if refusal := await limits.refusal(channel):
        return refusal
    params = request.query_params
    token = params.get("hub.verify_token", "")
    challenge = params.get("hub.challenge", "")
    expected = channel.verify_token
    if (
        params.get("hub.mode") != "subscribe"
        or expected is None
        or not hmac.compare_digest(token.encode(), expected.encode())
        or not _CHALLENGE.match(challenge)
    ):
        await limits.failed(channel)
        return _text(403, "Forbidden")
    return _text(200, challenge)


def signature_valid(body: bytes, header: str | None, app_secret: str) -> bool:
    """`X-Hub-Signature-256` equals HMAC-SHA256(app secret, raw body), in constant time."""
    match = _SIGNATURE.match(header or "")
    if match is None:
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(1).lower())


async def notify(request: Request) -> Response:
    """Verify, store durably, answer; then process."""
    runtime = runtime_of(request)
    try:
        body = await read_body(request, MAX_BODY_BYTES)
    except PayloadTooLarge:
        return _text(413, "Payload too large")
    except WefluxError:
        return _text(400, "Bad request")
    channel = await _channel(request, runtime)
    if isinstance(channel, Response):
        return channel
    if channel.app_secret is None or not signature_valid(
        body, request.headers.get("x-hub-signature-256"), channel.app_secret
    ):
        # Limits are consulted only once a signature failed: an HMAC cannot be guessed,
        # and a correctly signed delivery is never throttled, whatever an attacker spent
        # of its IP's or its URL's failures (Meta's retries must always get through).
        limits = _FailureLimits(request, runtime, "signature")
        # Counted for the detector before any refusal: throttled failures count too.
        await runtime.detectors.webhook_signature_failed(
            runtime.db,
            RequestMeta(ip=limits.ip, user_agent=request.headers.get("user-agent")),
            org_id=channel.account.org_id if channel.account else None,
            url_key=channel.limit_key,
        )
        if refusal := await limits.refusal() or await limits.refusal(channel):
            return refusal
        await limits.failed(channel)
        return _text(401, "Invalid signature")
    event = ingest.ReceivedEvent.of(body, channel.account.id if channel.account else None)
    intake = runtime.webhook_intake
    failure: BaseException | None = None
    if await intake.claim_inline():
        try:
            await ingest.store_and_process(
                runtime.db, runtime.broker, runtime.settings, event, runtime.channel_cache
            )
        except Exception as error:
            webhook_queue.log_failure("webhook processing failed", event.id, error)
            failure = error
        else:
            return _text(200, "OK")
        finally:
            intake.release_inline()
    try:
        # Not routed yet: the session names the one event it writes.
        await webhook_queue.store(runtime.db, runtime.settings, event, failure)
    except Exception:
        log.exception("could not store a verified webhook; Meta will retry")
        return _text(503, "Unavailable")
    if failure is None:
        intake.offer(event.id)
    return _text(200, "OK")


routes = [
    Route("/webhooks/whatsapp", handshake, methods=["GET"]),
    Route("/webhooks/whatsapp", notify, methods=["POST"]),
    Route("/webhooks/whatsapp/{webhook_key}", handshake, methods=["GET"]),
    Route("/webhooks/whatsapp/{webhook_key}", notify, methods=["POST"]),
]
