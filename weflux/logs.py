"""Structured logs: one JSON object per line, carrying the request id.

Nothing a client sends is logged: not a query string, a header value, a GraphQL
document or variable, nor a password or token in a body. Our own lines name what
happened; the libraries' lines that would quote a client are guarded here, and known
secret values (`weflux.crypto.redaction`) are scrubbed from every record as a second
line of defence.
"""

from __future__ import annotations

import contextvars
import importlib.util
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from weflux.crypto.redaction import RedactionRegistry, registry
from weflux.crypto.secret import Secret

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "weflux_request_id", default=None
)

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# How deep the secret filter looks into containers passed as `extra=`; deeper ones are stringified.
_MAX_DEPTH = 6


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_") and value is not None
        }
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# The websockets library, under uvicorn's logger, prints frames and handshake headers at DEBUG.
_WEBSOCKETS = importlib.util.find_spec("websockets")
_WEBSOCKETS_SOURCE = (
    os.path.dirname(_WEBSOCKETS.origin) + os.sep if _WEBSOCKETS and _WEBSOCKETS.origin else None
)
# Loggers of libraries whose lines can quote a client: URLs with their query, header values.
GUARDED_LOGGERS = ("uvicorn.error", "uvicorn.access", "strawberry.ws")
_ORIGIN_REJECTED = "Rejected WebSocket connection from origin"


WEBHOOK_PATH = "/webhooks/whatsapp/"


def loggable_target(target: str) -> str:
    """A request target (or URL) as it may be logged or shown: without its query string,
    and with a webhook URL's key (a capability naming the channel) cut to 4 characters."""
    path = target.partition("?")[0]
    head, sep, key = path.rpartition(WEBHOOK_PATH)
    return f"{head}{sep}{key[:4]}…" if sep and key else path


def _without_query(value: object) -> object:
    return loggable_target(value) if isinstance(value, str) else value


class ClientDataFilter(logging.Filter):
    """Drop or trim library log lines that would carry what a client sent.

    uvicorn writes request targets with their query string (`GET /path?token=…`,
    `"WebSocket /graphql?token=…" [accepted]`): the query is cut, and a webhook URL's
    key with it (`loggable_target`). The websockets
    library's DEBUG traces of frames and handshake headers are dropped. Strawberry's
    warning about a refused `Origin` quotes the header: it is replaced by a fixed line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _WEBSOCKETS_SOURCE and record.pathname.startswith(_WEBSOCKETS_SOURCE):
            return False
        if isinstance(record.msg, str) and record.msg.startswith(_ORIGIN_REJECTED):
            record.msg, record.args = "Rejected a WebSocket connection from a foreign origin", ()
        elif record.name.startswith("uvicorn.") and isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


def guard_library_logs() -> None:
    """Put a `ClientDataFilter` on each of `GUARDED_LOGGERS`, once; safe to call again."""
    for name in GUARDED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ClientDataFilter) for existing in logger.filters):
            logger.addFilter(ClientDataFilter())


_exception_formatter = logging.Formatter()


class RedactedTraceback(Exception):
    """Stands in for a logged exception whose traceback held a secret; carries the redacted text."""


def _redact_value(value: Any, scrub: Callable[[str], str], depth: int = 0) -> Any:
    """`value` with secrets scrubbed from its strings; the same object when it held none."""
    if value is None or isinstance(value, bool | Secret):
        return value
    if isinstance(value, str):
        return scrub(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            items = [
                (_redact_value(k, scrub, depth + 1), _redact_value(v, scrub, depth + 1))
                for k, v in value.items()
            ]
            changed = any(
                new_k is not k or new_v is not v
                for (new_k, new_v), (k, v) in zip(items, value.items(), strict=True)
            )
            return dict(items) if changed else value
        if isinstance(value, list | tuple | set | frozenset):
            members = [_redact_value(member, scrub, depth + 1) for member in value]
            if all(new is old for new, old in zip(members, value, strict=True)):
                return value
            if isinstance(value, list):
                return members
            if isinstance(value, tuple):
                return tuple(members)  # a plain tuple: named tuples take other arguments
            return set(members) if isinstance(value, set) else frozenset(members)
    # Anything else is rendered with str() by our formatters: check that rendering.
    try:
        text = str(value)
    except Exception:
        return "<unprintable value>"
    redacted = scrub(text)
    return value if redacted == text else redacted


class SecretRedactingFilter(logging.Filter):
    """Replace registered secrets in a log record by `[REDACTED]`, for every handler after it."""

    # It checks the formatted message and its args, the exception and stack text, and
    # every `extra=` attribute, and rewrites the record itself (`msg` = the redacted
    # message, `args` = ()), so that every formatter downstream sees redacted text only.
    # Records without secrets keep their msg and args: log grouping relies on them.

    def __init__(self, redaction_registry: RedactionRegistry | None = None) -> None:
        super().__init__()
        self.registry = redaction_registry or registry

    def filter(self, record: logging.LogRecord) -> bool:
        if not len(self.registry):
            return True
        try:
            self._redact(record)
        except Exception:
            # Fail closed: a record we could not check must not reach a handler as it is.
            record.msg = "log message withheld: redaction failed"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        scrub = self.registry.redact
        try:
            message = record.getMessage()
        except Exception:
            # A malformed call: keep msg and args (handleError reports them) but scrubbed.
            record.msg = _redact_value(record.msg, scrub)
            if record.args:
                record.args = _redact_value(record.args, scrub)
        else:
            redacted = scrub(message)
            if redacted != message or (
                record.args and _redact_value(record.args, scrub) is not record.args
            ):
                record.msg = redacted
                record.args = ()
        self._redact_exception(record, scrub)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            redacted_value = _redact_value(value, scrub)
            if redacted_value is not value:
                setattr(record, key, redacted_value)

    def _redact_exception(self, record: logging.LogRecord, scrub: Callable[[str], str]) -> None:
        text = record.exc_text
        if record.exc_info and record.exc_info[0] is not None and not text:
            text = _exception_formatter.formatException(record.exc_info)
        if not text:
            return
        redacted = scrub(text)
        record.exc_text = redacted
        if redacted != text and record.exc_info:
            # Formatters that re-format `exc_info` (ours do) must not see the original;
            # a stand-in prints exactly the redacted traceback.
            standin = RedactedTraceback(redacted)
            record.exc_info = (RedactedTraceback, standin, None)


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add a `SecretRedactingFilter` to every handler of `logger` (default: the root's), once."""
    # On the handlers: a filter on the logger itself would miss propagated records.
    # Handlers added later are not covered; call it again after adding one.
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(existing, SecretRedactingFilter) for existing in handler.filters):
            handler.addFilter(SecretRedactingFilter())


def describe_exception(error: BaseException) -> str:
    """Where an exception (and each one it was raised from) came from, and its class.

    The messages are left out: an exception's message can quote the input that caused
    it (a password literal, a variable's value).
    """
    parts: list[str] = []
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        kind = type(current)
        parts.append(f"{frames}{kind.__module__}.{kind.__qualname__}")
        cause = current.__cause__
        current = (
            cause if cause is not None or current.__suppress_context__ else current.__context__
        )
    return "\n\nraised from, or while handling:\n".join(parts)


class LogSettings(Protocol):
    """What logging reads of the settings (`weflux.config.Settings`)."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


def configure_logging_for(settings: LogSettings) -> None:
    """Logging as the settings say (`WEFLUX_LOG_LEVEL`, `WEFLUX_LOG_FORMAT`)."""
    configure_logging(settings.log_level, settings.log_format)


def logging_configured() -> bool:
    """Whether `configure_logging` set this process's logging up (its handler is on the root)."""
    return any(getattr(handler, "_weflux", False) for handler in logging.getLogger().handlers)


def configure_logging_unless_done(settings: LogSettings) -> None:
    """`configure_logging_for`, unless this process's logging is set up already: the app
    factory's, which `weflux serve` (set up already) and `uvicorn --factory` (not) both call."""
    if not logging_configured():
        configure_logging_for(settings)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (ours, uvicorn's, SQLAlchemy's) to one structured handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_weflux", False):
            root.removeHandler(existing)
    handler._weflux = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our middleware writes the access log, with the request id.
    logging.getLogger("uvicorn.access").disabled = True
    guard_library_logs()
    # httpcore's debug traces print raw headers; httpx logs every outgoing request.
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # SQLAlchemy's DEBUG lines are result rows (message texts, emails, user agents).
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    # Second line of defence: known secret values never reach a handler's output.
    install_redaction()
