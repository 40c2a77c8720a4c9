"""Structured logs: one JSON object per line, carrying the request id.

Nothing a client sends is logged: not a query string, a header value, a GraphQL
document or variable, nor a password or token in a body. Our own lines name what
happened; the libraries' lines that would quote a client are guarded here.
"""

from __future__ import annotations

import contextvars
import importlib.util
import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "weflux_request_id", default=None
)

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


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


def _without_query(value: object) -> object:
    return value.partition("?")[0] if isinstance(value, str) else value


class ClientDataFilter(logging.Filter):
    """Drop or trim library log lines that would carry what a client sent.

    uvicorn writes request targets with their query string (`GET /path?token=…`,
    `"WebSocket /graphql?token=…" [accepted]`): the query is cut. The websockets
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
    # deferred: start-up cost (the CLI imports this module, and `weflux.crypto`'s package
    # brings the models, hence SQLAlchemy, which `weflux --help` must not load)
    from weflux.crypto.secret import install_redaction

    install_redaction()
