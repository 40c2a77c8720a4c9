"""Configuration: environment variables prefixed `WEFLUX_` (and a `.env` file)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from weflux.mail.smtp import SmtpConfig
from weflux.mail.url import is_loopback, parse_smtp_url
from weflux.tls import plaintext_database_url, plaintext_redis_url

log = logging.getLogger(__name__)

Environment = Literal["development", "test", "production"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A key id, written into every envelope (`weflux.crypto.keyring`): never `|` or `:`.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an RFC 9110 token
DEV_SECRETS_FILE = "dev-secrets.json"
MAX_REFRESH_REUSE_INTERVAL = timedelta(minutes=5)
MAX_WORKSPACE_DELETION_GRACE = timedelta(days=23)
# The default of WEFLUX_SMTP_ALLOWED_PORTS: SMTP relay, implicit TLS, submission, and the
# common alternative submission port.
SMTP_PORTS = (25, 465, 587, 2525)
MIN_REMOVAL_RETENTION = timedelta(days=1)
# The audit trail's and security events' IP addresses and user agents: an incident is
# investigated within a day at least; a year at most, never for ever.
MIN_AUDIT_NETWORK_RETENTION = timedelta(days=1)
MAX_AUDIT_NETWORK_RETENTION = timedelta(days=365)
# bcrypt's pool (weflux.auth.passwords.BcryptPool): two threads keep two cores busy at
# most; 32 waiting calls are about 4 s of work at cost 12.
PASSWORD_HASHING_WORKERS = 2
PASSWORD_HASHING_QUEUE = 32
DATABASE_FILE = "weflux.db"  # the default SQLite database, under WEFLUX_VAR_DIR


class ConfigError(ValueError):
    """A setting is missing or unsafe; the message names the variable to fix."""


def parse_duration(value: Any) -> timedelta:
    """Parse `7d`, `12h`, `15m`, `30s` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 7d, 12h, 15m, 30s or a number of seconds")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return timedelta(seconds=seconds)


def parse_encryption_keys(
    value: str, *, variable: str = "WEFLUX_ENCRYPTION_KEYS"
) -> list[tuple[str, bytes]]:
    """Parse `kid:base64(32 bytes)` entries; the first is the primary key."""
    keys: list[tuple[str, bytes]] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        kid, sep, encoded = entry.partition(":")
        if not sep or not KEY_ID_PATTERN.match(kid):
            raise ConfigError(
                f"{variable}: each entry must be `kid:base64key` "
                "with a key id of letters, digits, `_`, `.` or `-`"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{variable}: key `{kid}` is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(f"{variable}: key `{kid}` must decode to 32 bytes")
        if any(existing == kid for existing, _ in keys):
            raise ConfigError(f"{variable}: key id `{kid}` appears twice")
        keys.append((kid, key))
    if not keys:
        raise ConfigError(f"{variable}: no key given")
    return keys


def generate_encryption_key_entry(kid: str | None = None) -> str:
    """A new `kid:base64key` entry for `WEFLUX_ENCRYPTION_KEYS`."""
    kid = kid or f"k{secrets.token_hex(4)}"
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [str(item).strip() for item in value if str(item).strip()]


SECURITY_THRESHOLDS = (
    "security_brute_force",
    "security_credential_stuffing",
    "security_webhook_signature_failures",
)


def parse_threshold(name: str, value: str) -> tuple[int, int]:
    """A detector threshold `COUNT/PERIOD` as (count, seconds), naming the variable on error."""
    try:
        item = parse(value)
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise ConfigError(
            f"WEFLUX_{name.upper()}: `{value}` is not a threshold; use `10/hour` or `30/15 minutes`"
        )
    return item.amount, item.get_expiry()


class Settings(BaseSettings):
    """Every setting of the service; see docs/operations/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="WEFLUX_", env_file=".env", extra="ignore", validate_default=True
    )

    env: Environment = "development"
    # Empty: the SQLite file `DATABASE_FILE` under `var_dir` (see `_default_database`).
    database_url: str = ""
    database_migration_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_connect_timeout: float = Field(default=5.0, gt=0)
    # PostgreSQL: a serving process opens its pool's connections at start (Database.warm_pool).
    database_warm_pool: bool = True
    redis_url: str | None = None
    jwt_secret: SecretStr | None = None
    encryption_keys: SecretStr | None = None
    in_process_worker: bool = True
    health_refresh_interval: timedelta = timedelta(hours=1)
    access_token_ttl: timedelta = timedelta(days=7)
    refresh_token_ttl: timedelta = timedelta(days=30)
    # A session's absolute lifetime from its login; no refresh reaches past it.
    session_max_age: timedelta = timedelta(days=90)
    # A just-rotated refresh token presented again within this answers the same successor
    # pair (several browser tabs refreshing at once); 0 turns the grace off.
    refresh_reuse_interval: timedelta = timedelta(seconds=10)
    # Sensitive operations need an authentication of the session within this.
    reauthentication_window: timedelta = timedelta(minutes=10)
    # bcrypt's own thread pool: threads, and calls that may wait for one (429 beyond).
    password_hashing_workers: int = Field(default=PASSWORD_HASHING_WORKERS, ge=1, le=64)
    password_hashing_queue: int = Field(default=PASSWORD_HASHING_QUEUE, ge=0, le=10_000)
    # The platform's own mail (sign-up confirmations, invitations, alerts to Admins, new-device
    # and incident notices): smtp://user:pass@host:587 (STARTTLS), smtps://… (implicit
    # TLS), plain smtp:// to a loopback host only. Unset outside
    # production: messages are written to var/outbox/ instead.
    smtp_url: SecretStr | None = None
    smtp_from: str | None = None
    # Without smtp_url: the worker's retention deletes the outbox's files once this old.
    dev_outbox_retention: timedelta = timedelta(days=7)
    # The ports a workspace's SMTP settings may name in production (sendTestEmail must not
    # sweep a host's other ports): submission and relay ports unless widened here.
    smtp_allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(SMTP_PORTS)
    )
    # The single-page app, for links in emails (`<app>/signup/confirm#token=…`,
    # `<app>/invitations/accept#token=…`).
    app_url: str | None = None
    allowed_origins: Annotated[list[str] | None, NoDecode] = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Request headers browsers may send cross-origin, beside Authorization, Content-Type
    # and X-Request-ID (always allowed): Apollo Client's and tracing headers by default.
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "apollographql-client-name",
            "apollographql-client-version",
            "sentry-trace",
            "baggage",
            "traceparent",
            "tracestate",
        ]
    )
    meta_graph_url: str = "https://graph.facebook.com"
    meta_graph_version: str = "v25.0"
    meta_app_secret: SecretStr | None = None
    meta_verify_token: SecretStr | None = None
    graphql_introspection: bool = True
    # Vulnerability disclosure (/.well-known/security.txt, RFC 9116): where researchers
    # write, and the policy page (unset: the app's own /.well-known/security-policy).
    security_contact: str = "mailto:security@serves.in"
    security_policy_url: str | None = None
    # TLS in `weflux serve` (both or neither); see docs/operations/tls.md.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Production refuses plain-text Redis and PostgreSQL URLs to other hosts unless true.
    allow_insecure_transport: bool = False
    # Query cost (see docs/api/limits.md): the nodes one operation may return, the
    # deadline of one operation, and the leaky buckets its cost is charged to.
    graphql_max_nodes: int = Field(default=10_000, ge=1)
    graphql_timeout: timedelta = timedelta(seconds=10)
    # Open WebSockets one process holds (docs/realtime.md#how-many-sockets): per session
    # and per member (at `connection_init`, closed 4403), per client IP, and per client
    # IP not yet past `connection_init` (at the handshake, 429).
    websocket_max_per_session: int = Field(default=20, ge=1)
    websocket_max_per_member: int = Field(default=50, ge=1)
    websocket_max_per_ip: int = Field(default=500, ge=1)
    websocket_max_pending_per_ip: int = Field(default=50, ge=1)
    database_statement_timeout: timedelta = timedelta(seconds=30)
    # Rate limits, in the `limits` notation ("10/minute", "100/hour;1000/day").
    rate_limit_login_ip: str = "20/minute;200/hour"
    # Failed password checks (login and every other one; see weflux/auth/guard.py):
    # per account and IP, and per account across IPs (the cap of a distributed attack).
    rate_limit_login_account_ip: str = "10/hour"
    rate_limit_login_account: str = "100/hour"
    rate_limit_signup_ip: str = "5/hour"
    rate_limit_signup_email: str = "3/hour;10/day"
    rate_limit_signup_confirm_ip: str = "20/hour"
    rate_limit_invitation_ip: str = "10/hour"
    rate_limit_refresh_ip: str = "60/minute"
    rate_limit_switch_ip: str = "60/minute"
    rate_limit_invitation_resend: str = "3/hour;10/day"
    # Invitation emails (invited or resent) per workspace, and per workspace and address.
    rate_limit_invitation_workspace: str = "100/hour;300/day"
    rate_limit_invitation_email: str = "3/hour;10/day"
    # Megabytes a workspace may upload (uploadMedia; each file counts its size, rounded up).
    rate_limit_media_upload_mb_workspace: str = "5000/hour;20000/day"
    rate_limit_graphql_ip: str = "600/minute"
    rate_limit_graphql_workspace: str = "3000/minute"
    # WebSocket handshakes to /graphql per client IP, every process together (see
    # weflux/realtime/caps.py for the concurrent caps of one process below).
    rate_limit_websocket_ip: str = "300/minute"
    # Failed proofs of a webhook secret (wrong verify token, bad signature) per client IP
    # and per webhook URL; successes never count (see weflux/api/webhooks.py).
    rate_limit_webhook_verify_ip: str = "10/minute;60/hour"
    rate_limit_webhook_verify_key: str = "20/minute;120/hour"
    rate_limit_webhook_signature_ip: str = "30/minute;300/hour"
    rate_limit_webhook_signature_key: str = "120/minute;1200/hour"
    # Paid sends: templates queued per workspace and per member (weflux.services.quotas).
    rate_limit_template_sends_workspace: str = "1000/hour;10000/day"
    rate_limit_template_sends_member: str = "200/hour;1000/day"
    # The whole request body must arrive within this time of the app's first read (408).
    request_body_timeout: timedelta = timedelta(seconds=30)
    # Cost budgets, `CAPACITY:RESTORE/UNIT` (points; see weflux/throttle/leaky_bucket.py).
    rate_limit_graphql_cost_workspace: str = "100000:1000/second"
    rate_limit_graphql_cost_member: str = "20000:200/second"
    max_auth_body_bytes: int = Field(default=16_384, ge=1024)
    graphql_max_body_bytes: int = Field(default=262_144, ge=1024)
    # A multipart upload (uploadMedia): WhatsApp's largest file (a 100 MB document) and room.
    graphql_max_upload_bytes: int = Field(default=101 * 1024 * 1024, ge=1024)
    graphql_ide: bool | None = None
    var_dir: Path = Path("var")  # made absolute against the working directory
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Inbox: whole-message keywords (trimmed, case-insensitive) that opt a contact out / in.
    opt_out_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["STOP", "UNSUBSCRIBE"]
    )
    opt_in_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["START", "SUBSCRIBE"]
    )
    # Outbound delivery (the worker's `delivery` job; see weflux/worker/delivery.py).
    delivery_interval: float = Field(default=0.5, gt=0, le=60)  # seconds between sweeps
    delivery_batch_size: int = Field(default=50, ge=1, le=1000)
    delivery_concurrency: int = Field(default=8, ge=1, le=100)  # conversations sent at once
    delivery_lease: timedelta = timedelta(seconds=60)  # a claimed message's SENDING lease
    delivery_max_attempts: int = Field(default=10, ge=1, le=100)
    delivery_backoff_base: float = Field(default=2.0, gt=0, le=3600)  # seconds
    delivery_backoff_cap: timedelta = timedelta(minutes=10)
    # Stored webhook events that fail (weflux/services/webhook_queue.py): parked after this
    # many attempts. At most 20: the whole retry schedule (backoff from 5 s, doubling, at
    # most 1 h) then fits in 12 hours, inside the shortest raw-body retention (1 day).
    webhook_max_attempts: int = Field(default=12, ge=1, le=20)
    # Backups (`weflux backup`; see docs/operations/backups.md): their own key ring, never
    # a key of WEFLUX_ENCRYPTION_KEYS; where they are written; how long `prune` keeps them.
    backup_keys: SecretStr | None = None
    backup_dir: Path | None = None  # unset: `<var_dir>/backups`
    backup_retention: timedelta = timedelta(days=30)
    # The data lifecycle (weflux/lifecycle/: erasure, deletion, exports, retention).
    lifecycle_interval: timedelta = timedelta(seconds=30)  # between the worker's sweeps
    lifecycle_batch_size: int = Field(default=500, ge=1, le=500)  # rows deleted per transaction
    workspace_deletion_grace: timedelta = timedelta(days=7)
    # Platform security events (IP addresses of no one workspace) and finished alerts.
    security_event_retention: timedelta = timedelta(days=90)
    # Uploads (uploadMedia) never sent: the daily retention deletes them after this.
    media_upload_retention: timedelta = timedelta(days=7)
    # Removals of the change feed (`conversationRemoved(after:)`): the daily retention
    # deletes older ones; resuming from a cursor older than the last deleted is refused.
    conversation_removal_retention: timedelta = timedelta(days=30)
    # Login sessions (their IP address and user agent): deleted this long after they expire.
    session_retention: timedelta = timedelta(days=30)
    # The IP addresses and user agents of the audit trail and of a workspace's security
    # events: blanked by the daily retention once this old (the events stay).
    audit_network_retention: timedelta = timedelta(days=90)
    export_dir: Path | None = None  # empty: `exports/` under var_dir
    # Media files (weflux/media/; docs/inbox.md#media): encrypted on local disk under
    # media_dir, or in S3-compatible storage when media_s3_url (s3://bucket/prefix) is set.
    media_dir: Path | None = None  # empty: `media/` under var_dir
    media_s3_url: str | None = None
    media_s3_endpoint_url: str | None = None  # e.g. MinIO, Ceph, R2; empty: AWS
    media_s3_region: str | None = None
    media_s3_access_key_id: str | None = None  # empty: boto3's own credential chain
    media_s3_secret_access_key: SecretStr | None = None
    # Each S3 call's connect and read timeout (boto3's own are 60 s each, 3 attempts: a
    # hanging store held a download for minutes); an outage then answers UPSTREAM_UNAVAILABLE.
    media_s3_timeout: timedelta = timedelta(seconds=10)
    media_download_interval: float = Field(default=1.0, gt=0, le=300)  # seconds between sweeps
    media_download_batch_size: int = Field(default=20, ge=1, le=500)
    media_download_concurrency: int = Field(default=4, ge=1, le=50)
    media_download_max_attempts: int = Field(default=8, ge=1, le=100)
    media_download_lease: timedelta = timedelta(minutes=5)  # a claimed download's lease

    @property
    def export_directory(self) -> Path:
        """Where encrypted export files are written (WEFLUX_EXPORT_DIR)."""
        return self.export_dir or self.var_dir / "exports"

    @property
    def media_directory(self) -> Path:
        """Where encrypted media files are written without S3 (WEFLUX_MEDIA_DIR)."""
        return self.media_dir or self.var_dir / "media"

    # Security operations (docs/security/operations.md): detector thresholds as
    # `COUNT/PERIOD` (the `limits` notation), the alert outbox and the on-call's webhook.
    security_brute_force: str = "10/hour"  # failed logins per account and IP
    security_credential_stuffing: str = "30/15 minutes"  # failed logins per IP ...
    security_credential_stuffing_accounts: int = Field(default=15, ge=2)  # ... over accounts
    security_webhook_signature_failures: str = "20/hour"  # bad signatures per webhook URL
    security_new_device_window: timedelta = timedelta(days=90)
    security_alert_url: str | None = None
    security_alert_secret: SecretStr | None = None
    security_alert_interval: float = Field(default=5.0, gt=0, le=300)  # seconds between sweeps
    security_alert_dedupe_window: timedelta = timedelta(hours=1)
    security_alert_mail_limit: int = Field(default=20, ge=1)  # Admin alert mails per hour

    # Sandbox channels (weflux.sandbox): seconds from an accepted send to its `sent`,
    # `delivered` and `read` status webhooks, each counted from the previous one.
    sandbox_status_delays: Annotated[tuple[float, float, float], NoDecode] = (0.5, 1.0, 2.0)

    # Names of the secrets that were generated for development rather than configured.
    generated_secrets: frozenset[str] = Field(default=frozenset(), exclude=True)

    @field_validator(
        "access_token_ttl",
        "refresh_token_ttl",
        "health_refresh_interval",
        "session_max_age",
        "reauthentication_window",
        "graphql_timeout",
        "database_statement_timeout",
        "security_new_device_window",
        "security_alert_dedupe_window",
        "lifecycle_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("workspace_deletion_grace", mode="before")
    @classmethod
    def _deletion_grace(cls, value: Any) -> timedelta:
        grace = parse_duration(value)
        if grace > MAX_WORKSPACE_DELETION_GRACE:
            # Deletion must complete within 30 days of the request (CONTRACT §7).
            raise ValueError("at most 23d: a deletion completes within 30 days of its request")
        return grace

    @field_validator("audit_network_retention", mode="before")
    @classmethod
    def _audit_network_retention(cls, value: Any) -> timedelta:
        kept = parse_duration(value)
        if not MIN_AUDIT_NETWORK_RETENTION <= kept <= MAX_AUDIT_NETWORK_RETENTION:
            raise ValueError("at least 1d and at most 365d: IP addresses are not kept for ever")
        return kept

    @field_validator("conversation_removal_retention", mode="before")
    @classmethod
    def _removal_retention(cls, value: Any) -> timedelta:
        kept = parse_duration(value)
        if kept < MIN_REMOVAL_RETENTION:
            # A client offline for less than this must resume without refetching.
            raise ValueError("at least 1d: a client away for a day must be able to resume")
        return kept

    @field_validator("smtp_allowed_ports", mode="before")
    @classmethod
    def _smtp_ports(cls, value: Any) -> list[int]:
        items = value if isinstance(value, list) else _split_list(value)
        try:
            ports = sorted({int(item) for item in items})
        except ValueError:
            raise ValueError("comma-separated port numbers, such as 25,465,587,2525") from None
        if not ports or not all(1 <= port <= 65535 for port in ports):
            raise ValueError("at least one port, each from 1 to 65535")
        return ports

    @field_validator("sandbox_status_delays", mode="before")
    @classmethod
    def _status_delays(cls, value: Any) -> tuple[float, float, float]:
        items = _split_list(value)
        if len(items) != 3:
            raise ValueError("three delays in seconds, for sent, delivered and read: 0.5,1,2")
        try:
            delays = tuple(float(item) for item in items)
        except ValueError:
            raise ValueError("each delay is a number of seconds") from None
        if any(not 0 <= delay <= 3600 for delay in delays):
            raise ValueError("each delay is between 0 and 3600 seconds")
        return (delays[0], delays[1], delays[2])

    @field_validator("refresh_reuse_interval", mode="before")
    @classmethod
    def _reuse_interval(cls, value: Any) -> timedelta:
        if str(value).strip() in ("0", "0s"):
            return timedelta(0)
        interval = parse_duration(value)
        if interval > MAX_REFRESH_REUSE_INTERVAL:
            raise ValueError("at most 5 minutes: a spent token must not stay usable for long")
        return interval

    @field_validator(
        "smtp_url",
        "smtp_from",
        "app_url",
        "security_policy_url",
        "ssl_certfile",
        "ssl_keyfile",
        "security_alert_url",
        "security_alert_secret",
        "export_dir",
        "media_dir",
        "media_s3_url",
        "media_s3_endpoint_url",
        "media_s3_region",
        "media_s3_access_key_id",
        "media_s3_secret_access_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Compose and shells pass unset optional variables as empty strings.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query:
            raise ValueError("expected the app's base URL, such as https://app.example.com")
        return value.strip().rstrip("/")

    @field_validator("security_contact")
    @classmethod
    def _security_contact(cls, value: str) -> str:
        value = value.strip()
        scheme = value.partition(":")[0].lower()
        if scheme not in ("mailto", "https", "tel") or len(value) <= len(scheme) + 1:
            raise ValueError("expected a mailto:, https: or tel: URI (RFC 9116 Contact)")
        if any(char.isspace() for char in value):
            raise ValueError("a URI has no spaces")
        return value

    @field_validator("security_policy_url")
    @classmethod
    def _security_policy_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme != "https" or not parsed.netloc:
            raise ValueError("expected an https:// URL (RFC 9116 Policy)")
        return value.strip()

    @field_validator("request_body_timeout", mode="before")
    @classmethod
    def _body_timeout(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> list[str] | None:
        return None if value is None else _split_list(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> list[str]:
        return _split_list(value)

    @field_validator("cors_allow_headers", mode="before")
    @classmethod
    def _header_names(cls, value: Any) -> list[str]:
        names = _split_list(value)
        for name in names:
            if name == "*" or not _HEADER_NAME.match(name):
                raise ValueError(f"`{name}` is not a header name; list header names, no wildcard")
        return names

    @field_validator("media_s3_url")
    @classmethod
    def _media_s3_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must look like s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("opt_out_keywords", "opt_in_keywords", mode="before")
    @classmethod
    def _keywords(cls, value: Any) -> list[str]:
        return _split_list(value)

    @field_validator(
        "delivery_lease",
        "delivery_backoff_cap",
        "backup_retention",
        "security_event_retention",
        "media_upload_retention",
        "session_retention",
        "dev_outbox_retention",
        "media_download_lease",
        "media_s3_timeout",
        mode="before",
    )
    @classmethod
    def _delivery_duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("delivery_lease")
    @classmethod
    def _lease(cls, value: timedelta) -> timedelta:
        # A lease must outlast one Cloud API call (its timeouts add up to about 40 s) and
        # the few seconds of retrying to store its outcome, or a second worker would take
        # over a message whose send is still in flight.
        if value < timedelta(seconds=50):
            raise ValueError("the delivery lease must be at least 50 seconds")
        return value

    @field_validator("media_s3_timeout")
    @classmethod
    def _s3_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=2):
            raise ValueError("must be more than 0 and at most 2m")
        return value

    @field_validator("var_dir")
    @classmethod
    def _absolute_var_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("backup_keys", "backup_dir", mode="before")
    @classmethod
    def _empty_backup_setting(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backup_dir")
    @classmethod
    def _absolute_backup_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @field_validator("database_url", "database_migration_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        # deferred: start-up cost (the CLI imports this module; `weflux --help` and the
        # light commands must not load SQLAlchemy)
        from sqlalchemy.engine import make_url

        url = make_url(value)
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError("use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db")
        if "sslmode" in url.query:
            # SQLAlchemy hands query options to asyncpg.connect, which knows only `ssl`.
            raise ValueError("write ssl=require (or verify-ca, verify-full): asyncpg's sslmode")
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / DATABASE_FILE}"
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def smtp_ports_guard(self) -> frozenset[int] | None:
        """The ports a workspace's SMTP settings may name: WEFLUX_SMTP_ALLOWED_PORTS in
        production, any elsewhere (as private hosts: local test servers)."""
        return frozenset(self.smtp_allowed_ports) if self.is_production else None

    @property
    def origins(self) -> list[str]:
        """The CORS and WebSocket `Origin` allow-list."""
        if self.allowed_origins is not None:
            return self.allowed_origins
        if self.env == "production":
            return []
        return ["http://localhost:5173", "http://127.0.0.1:5173"]

    @property
    def app_base_url(self) -> str:
        """Where links in emails point: `WEFLUX_APP_URL`, else the first allowed origin."""
        if self.app_url is not None:
            return self.app_url
        return (self.origins or ["http://localhost:5173"])[0]

    @property
    def ide_enabled(self) -> bool:
        return self.graphql_ide if self.graphql_ide is not None else self.env == "development"

    @property
    def migration_url(self) -> str:
        """Migrations may run as the schema owner; the app connects as a restricted role."""
        return self.database_migration_url or self.database_url

    @cached_property
    def platform_smtp(self) -> SmtpConfig | None:
        """The platform's own SMTP server (`WEFLUX_SMTP_URL`), or None without one."""
        if self.smtp_url is None:
            return None
        if not self.smtp_from:
            raise ConfigError("WEFLUX_SMTP_FROM must be set with WEFLUX_SMTP_URL")
        try:
            return parse_smtp_url(self.smtp_url.get_secret_value(), from_address=self.smtp_from)
        except ValueError as exc:
            raise ConfigError(f"WEFLUX_SMTP_URL: {exc}") from None

    @property
    def backups_path(self) -> Path:
        """Where `weflux backup create` writes and `prune` deletes: WEFLUX_BACKUP_DIR."""
        return self.backup_dir if self.backup_dir is not None else self.var_dir / "backups"

    @cached_property
    def backup_key_ring(self) -> list[tuple[str, bytes]]:
        """WEFLUX_BACKUP_KEYS: the first seals new backups, every one opens them."""
        if self.backup_keys is None:
            raise ConfigError(
                "WEFLUX_BACKUP_KEYS is not set: give backups keys of their own "
                "(`weflux keys generate --kid backup1` prints one)"
            )
        return parse_encryption_keys(
            self.backup_keys.get_secret_value(), variable="WEFLUX_BACKUP_KEYS"
        )

    def shared_backup_keys(self) -> list[str]:
        """Ids of backup keys whose bytes are also a key of WEFLUX_ENCRYPTION_KEYS."""
        if self.backup_keys is None or self.encryption_keys is None:
            return []
        application = {key for _, key in self.encryption_key_ring}
        return [kid for kid, key in self.backup_key_ring if key in application]

    @cached_property
    def encryption_key_ring(self) -> list[tuple[str, bytes]]:
        if self.encryption_keys is None:
            raise ConfigError("WEFLUX_ENCRYPTION_KEYS is not set")
        return parse_encryption_keys(self.encryption_keys.get_secret_value())

    def _transport_problems(self) -> list[str]:
        """Production: TLS to Meta always; to Redis and PostgreSQL on other hosts unless
        WEFLUX_ALLOW_INSECURE_TRANSPORT says the network is trusted."""
        problems: list[str] = []
        graph = urlsplit(self.meta_graph_url)
        if graph.scheme != "https" and not is_loopback(graph.hostname or ""):
            problems.append("WEFLUX_META_GRAPH_URL must be an https:// URL in production")
        if self.allow_insecure_transport:
            return problems
        if self.redis_url and plaintext_redis_url(self.redis_url):
            problems.append(_plaintext_refusal("WEFLUX_REDIS_URL", "use rediss://"))
        for variable, url in (
            ("WEFLUX_DATABASE_URL", self.database_url),
            ("WEFLUX_DATABASE_MIGRATION_URL", self.database_migration_url),
        ):
            if url and plaintext_database_url(url):
                problems.append(_plaintext_refusal(variable, "add ?ssl=require (or verify-full)"))
        return problems

    def check(self) -> None:
        """Refuse unsafe settings; production is strict, naming the setting to fix."""
        for origin in self.origins:
            if origin in ("*", "null") or "*" in origin:
                raise ConfigError(
                    f"WEFLUX_ALLOWED_ORIGINS: `{origin}` is not allowed; list exact origins"
                )
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ConfigError(
                "WEFLUX_JWT_SECRET must be at least 32 characters of random data: " + _JWT_HINT
            )
        if self.encryption_keys is not None:
            _ = self.encryption_key_ring
        if self.smtp_url is not None:
            _ = self.platform_smtp
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("WEFLUX_SSL_CERTFILE and WEFLUX_SSL_KEYFILE go together: set both")
        if self.backup_keys is not None:
            _ = self.backup_key_ring
        shared = self.shared_backup_keys()
        if shared and self.is_production:
            raise ConfigError(
                f"WEFLUX_BACKUP_KEYS: key `{shared[0]}` is also in WEFLUX_ENCRYPTION_KEYS; "
                "backups need keys of their own, or one stolen key opens both"
            )
        if shared:
            log.warning(
                "WEFLUX_BACKUP_KEYS shares a key with WEFLUX_ENCRYPTION_KEYS (`%s`); "
                "production refuses this",
                shared[0],
            )
        for name in SECURITY_THRESHOLDS:
            parse_threshold(name, getattr(self, name))
        if self.security_alert_url is not None:
            if not self.security_alert_url.startswith(("https://", "http://")):
                raise ConfigError("WEFLUX_SECURITY_ALERT_URL must be an http(s) URL")
            if self.security_alert_secret is None:
                raise ConfigError(
                    "WEFLUX_SECURITY_ALERT_SECRET must be set with WEFLUX_SECURITY_ALERT_URL: "
                    "the on-call verifies each alert's signature with it"
                )
            if len(self.security_alert_secret.get_secret_value()) < 32:
                raise ConfigError("WEFLUX_SECURITY_ALERT_SECRET must be at least 32 characters")
        if not self.is_production:
            return
        problems = self._production_problems()
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            # Every refusal at once: an operator fixes them in one round, not one a start.
            listed = "".join(f"\n  - {problem}" for problem in problems)
            raise ConfigError(f"{len(problems)} settings to fix for production:{listed}")

    def _production_problems(self) -> list[str]:
        """What production refuses, each naming its variable and what to set."""
        problems = self._transport_problems()
        for name, how in (
            ("jwt_secret", _JWT_HINT),
            ("encryption_keys", _KEYS_HINT),
        ):
            variable = f"WEFLUX_{name.upper()}"
            if getattr(self, name) is None:
                problems.append(f"{variable} must be set in production: {how}")
            elif name in self.generated_secrets or _is_dev_secret(self, name):
                problems.append(
                    f"{variable} holds a generated development secret; set a real one in "
                    f"production: {how}"
                )
        if self.ide_enabled:
            problems.append("WEFLUX_GRAPHQL_IDE must be false in production (or left unset)")
        if self.security_alert_url is not None and not self.security_alert_url.startswith(
            "https://"
        ):
            problems.append("WEFLUX_SECURITY_ALERT_URL must be https:// in production")
        if self.smtp_url is None:
            problems.append(
                "WEFLUX_SMTP_URL must be set in production: sign-up confirmations are "
                "emailed through the platform's own SMTP server (smtps://user:pass@host:465, "
                "or smtp://user:pass@host:587 with STARTTLS; and WEFLUX_SMTP_FROM)"
            )
        if self.app_url is None and not self.origins:
            problems.append(
                "WEFLUX_APP_URL must be set in production (or WEFLUX_ALLOWED_ORIGINS, whose "
                "first entry it defaults to): emailed links point at the app"
            )
        elif urlsplit(self.app_base_url).scheme != "https":
            # The links carry sign-up and invitation tokens (in the fragment): a page served
            # over plain HTTP can be rewritten on the way to read them.
            named = "WEFLUX_APP_URL" if self.app_url else "WEFLUX_ALLOWED_ORIGINS (its first entry)"
            problems.append(
                f"{named} must be an https:// URL in production: emailed links carry sign-up "
                "and invitation tokens to the app"
            )
        return problems


def _plaintext_refusal(variable: str, fix: str) -> str:
    return (
        f"{variable} would speak plain text to another host in production: {fix}, or set "
        "WEFLUX_ALLOW_INSECURE_TRANSPORT=true if the network between them is trusted"
    )


# What each refusal of a missing or weak secret tells the operator to run.
_JWT_HINT = "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'` prints a new one"
_KEYS_HINT = "`weflux keys generate` prints a new `kid:base64key` entry"


def _dev_secrets_path(settings: Settings) -> Path:
    return settings.var_dir / DEV_SECRETS_FILE


def _is_dev_secret(settings: Settings, name: str) -> bool:
    path = _dev_secrets_path(settings)
    value = getattr(settings, name)
    if value is None or not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(stored.get(name) == value.get_secret_value())


def _load_or_create_dev_secrets(path: Path) -> dict[str, str]:
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        stored = {}
    changed = False
    if not stored.get("jwt_secret"):
        stored["jwt_secret"] = secrets.token_urlsafe(48)
        changed = True
    if not stored.get("encryption_keys"):
        stored["encryption_keys"] = generate_encryption_key_entry("dev1")
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle, indent=2)
    os.chmod(path, 0o600)
    return stored


# The generated secrets' warning is given once per process and file: `weflux serve` reads
# the settings, then the app factory it starts in the same process reads them again.
_WARNED_OF_DEV_SECRETS: set[tuple[Path, str]] = set()


def load_settings(
    configure: Callable[[Settings], object] | None = None, /, **overrides: Any
) -> Settings:
    """Read the settings, filling development secrets from `var/dev-secrets.json`.

    `configure` (a command's logging, `weflux.logs.configure_logging_for`) runs on the
    settings as read, before their checks log anything (the generated secrets' warning),
    so that every line of a start comes out in the configured format.
    """
    settings = Settings(**overrides)
    if configure is not None:
        configure(settings)
    missing = [
        name for name in ("jwt_secret", "encryption_keys") if getattr(settings, name) is None
    ]
    if missing and not settings.is_production:
        path = _dev_secrets_path(settings)
        stored = _load_or_create_dev_secrets(path)
        names = ", ".join(f"WEFLUX_{name.upper()}" for name in missing)
        if (path, names) not in _WARNED_OF_DEV_SECRETS:
            _WARNED_OF_DEV_SECRETS.add((path, names))
            log.warning(
                "using generated development secrets from %s for %s; never use them in production",
                path,
                names,
            )
        settings = settings.model_copy(
            update={name: SecretStr(stored[name]) for name in missing}
            | {"generated_secrets": frozenset(missing)}
        )
    settings.check()
    return settings
