"""Errors of the WhatsApp Cloud API, classified by what the caller should do next."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import StrEnum

# Meta's long- and short-lived tokens start with `EAA`; scrubbed from any text we keep.
_TOKEN_LIKE = re.compile(r"\bEAA[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"

_TOKEN_INVALID = frozenset({190})
_RATE_LIMITED = frozenset({130429, 131056, 80007, 4})
_RETRYABLE = frozenset({131000, 1, 2, 131016})
_OUTSIDE_SERVICE_WINDOW = frozenset({131047})
_PERMANENT = frozenset({131026, 131051, 368, *range(132000, 132016)})


class ErrorKind(StrEnum):
    """What a failed Cloud API call means for the caller."""

    TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105 (a kind, not a secret); flag the account
    RATE_LIMITED = "RATE_LIMITED"  # retry later, with backoff
    RETRYABLE = "RETRYABLE"  # transient: Meta or the network failed; retry with backoff
    OUTSIDE_SERVICE_WINDOW = "OUTSIDE_SERVICE_WINDOW"  # 24-hour window closed: send a template
    PERMANENT = "PERMANENT"  # retrying the same request will not help


def classify(code: int | None, http_status: int | None) -> ErrorKind:
    """Classify a Meta error code (or, failing that, the HTTP status) into an ErrorKind."""
    if code is not None:
        if code in _TOKEN_INVALID:
            return ErrorKind.TOKEN_INVALID
        if code in _RATE_LIMITED:
            return ErrorKind.RATE_LIMITED
        if code in _RETRYABLE:
            return ErrorKind.RETRYABLE
        if code in _OUTSIDE_SERVICE_WINDOW:
            return ErrorKind.OUTSIDE_SERVICE_WINDOW
        if code in _PERMANENT:
            return ErrorKind.PERMANENT
    if http_status is None:
        # No HTTP answer at all is a network failure; a bare unknown code is final.
        return ErrorKind.RETRYABLE if code is None else ErrorKind.PERMANENT
    if http_status >= 500:
        return ErrorKind.RETRYABLE
    if http_status == 429:
        return ErrorKind.RATE_LIMITED
    return ErrorKind.PERMANENT


def scrub(text: str, *secrets: str) -> str:
    """Replace the given secrets, and anything shaped like a Meta access token, in text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _TOKEN_LIKE.sub(REDACTED, text)


@dataclass(eq=False)
class MetaApiError(Exception):
    """A failed Cloud API call, with Meta's error fields and its classification."""

    code: int | None
    subcode: int | None
    title: str
    message: str
    fbtrace_id: str | None
    http_status: int | None
    kind: ErrorKind

    def __post_init__(self) -> None:
        """Scrub token-shaped text and keep `args` in step, so the error pickles."""
        self.title = scrub(self.title)
        self.message = scrub(self.message)
        super().__init__(*(getattr(self, item.name) for item in fields(self) if item.init))

    def __str__(self) -> str:
        """A one-line summary naming the code, kind, HTTP status and trace id."""
        code = "?" if self.code is None else str(self.code)
        if self.subcode is not None:
            code += f"/{self.subcode}"
        status = "no HTTP response" if self.http_status is None else f"HTTP {self.http_status}"
        text = f"{self.title} (code {code}, {self.kind}, {status}"
        if self.fbtrace_id:
            text += f", fbtrace_id {self.fbtrace_id}"
        text += ")"
        if self.message and self.message != self.title:
            text += f": {self.message}"
        return text


@dataclass(eq=False)
class MetaUnavailable(MetaApiError):
    """The Cloud API did not answer: a timeout or a connection failure (always RETRYABLE)."""

    code: int | None = None
    subcode: int | None = None
    title: str = "Cloud API unavailable"
    message: str = ""
    fbtrace_id: str | None = None
    http_status: int | None = None
    kind: ErrorKind = field(default=ErrorKind.RETRYABLE, init=False)
