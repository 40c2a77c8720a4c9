"""Secret values that refuse to leak, and log redaction as a second line of defence.

A `Secret` masks itself in `repr`, `str`, f-strings, `%s`, JSON (it raises), pickle
(it raises), pydantic serialisation and GraphQL string output; only `reveal()` hands
out the plaintext. Every Secret also registers its plaintext with a bounded,
process-wide `RedactionRegistry`, and `SecretRedactingFilter` scrubs registered
values from log records, in case a revealed value is ever logged by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import quote

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

MASK = "********"
REDACTED = "[REDACTED]"

# Shorter values would match ordinary words and numbers and redact half of every log.
MIN_REDACTED_LENGTH = 6
MAX_REGISTERED_SECRETS = 10_000

# How deep the filter looks into containers passed as `extra=`; deeper ones are stringified.
_MAX_DEPTH = 6


class RedactionRegistry:
    """A bounded, thread-safe set of secret values to scrub from text (an LRU)."""

    # Only keyed BLAKE2b digests of the values are kept (plus the built-in hash of their
    # first characters, to find candidates), so the registry is no long-lived copy of the
    # secrets. `redact` costs one dict lookup per character of text, however many values.

    def __init__(
        self, max_size: int = MAX_REGISTERED_SECRETS, min_length: int = MIN_REDACTED_LENGTH
    ) -> None:
        if max_size < 1 or min_length < 1:
            raise ValueError("max_size and min_length must be positive")
        self.max_size = max_size
        self.min_length = min_length
        # A per-process key: the digests are useless outside this process.
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        # digest of a value -> the (prefix hash, length, digest) of each of its forms;
        # insertion order is recency order (an LRU).
        self._entries: dict[bytes, tuple[tuple[int, int, bytes], ...]] = {}
        # Read without the lock by `redact`: only ever replaced or updated atomically.
        self._digests: dict[bytes, int] = {}
        self._lengths: dict[int, tuple[int, ...]] = {}
        self._length_counts: dict[int, dict[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"RedactionRegistry(size={len(self)}, max_size={self.max_size})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a RedactionRegistry cannot be pickled")

    def _digest(self, text: str) -> bytes:
        data = text.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._key, digest_size=16).digest()

    def _forms(self, value: str) -> set[str]:
        """The spellings a value takes in logs: itself, escaped in a repr or JSON, in a URL."""
        return {
            value,
            repr(value)[1:-1],
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            quote(value, safe=""),
        }

    def register(self, value: str) -> None:
        """Remember `value` (if long enough) so that it is redacted from now on."""
        if not isinstance(value, str) or len(value) < self.min_length:
            return
        key = self._digest(value)
        with self._lock:
            forms = self._entries.pop(key, None)
            if forms is not None:
                self._entries[key] = forms  # seen again: now the most recent
                return
            forms = tuple(
                (hash(form[: self.min_length]), len(form), self._digest(form))
                for form in self._forms(value)
            )
            self._entries[key] = forms
            for prefix, length, digest in forms:
                self._add_form(prefix, length, digest)
            while len(self._entries) > self.max_size:
                oldest = next(iter(self._entries))
                for prefix, length, digest in self._entries.pop(oldest):
                    self._remove_form(prefix, length, digest)

    def clear(self) -> None:
        """Forget every registered value."""
        with self._lock:
            self._entries.clear()
            self._digests.clear()
            self._lengths.clear()
            self._length_counts.clear()

    def _add_form(self, prefix: int, length: int, digest: bytes) -> None:
        self._digests[digest] = self._digests.get(digest, 0) + 1
        counts = self._length_counts.setdefault(prefix, {})
        counts[length] = counts.get(length, 0) + 1
        # Longest first, so that a secret containing another is redacted whole.
        self._lengths[prefix] = tuple(sorted(counts, reverse=True))

    def _remove_form(self, prefix: int, length: int, digest: bytes) -> None:
        if self._digests.get(digest, 0) <= 1:
            self._digests.pop(digest, None)
        else:
            self._digests[digest] -= 1
        counts = self._length_counts.get(prefix, {})
        if counts.get(length, 0) <= 1:
            counts.pop(length, None)
        else:
            counts[length] -= 1
        if counts:
            self._lengths[prefix] = tuple(sorted(counts, reverse=True))
        else:
            self._length_counts.pop(prefix, None)
            self._lengths.pop(prefix, None)

    def redact(self, text: str) -> str:
        """`text` with every registered secret replaced by `[REDACTED]`."""
        lengths_by_prefix = self._lengths
        width = self.min_length
        if not lengths_by_prefix or len(text) < width:
            return text
        digests = self._digests
        pieces: list[str] = []
        start = position = 0
        end = len(text) - width
        while position <= end:
            lengths = lengths_by_prefix.get(hash(text[position : position + width]))
            if lengths:
                for length in lengths:
                    candidate = text[position : position + length]
                    if len(candidate) == length and self._digest(candidate) in digests:
                        pieces.append(text[start:position])
                        pieces.append(REDACTED)
                        position += length
                        start = position
                        break
                else:
                    position += 1
                continue
            position += 1
        if not pieces:
            return text
        pieces.append(text[start:])
        return "".join(pieces)

    def contains_secret(self, text: str) -> bool:
        """Whether `text` holds a registered secret."""
        return self.redact(text) != text


registry = RedactionRegistry()


def register_secret(value: str) -> None:
    """Add `value` to the process-wide redaction registry."""
    registry.register(value)


def redact(text: str) -> str:
    """`text` with every secret of the process-wide registry replaced by `[REDACTED]`."""
    return registry.redact(text)


def _mask(_value: object) -> str:
    return MASK


class Secret:
    """A secret string: masked everywhere, except through `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret wraps a str, not {type(value).__name__}")
        self._value = value
        registry.register(value)

    def reveal(self) -> str:
        """The plaintext; use it where it is needed and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return format(MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other_value = other._value
        elif isinstance(other, str):
            other_value = other
        else:
            return NotImplemented
        # Constant time: a comparison must not tell an attacker how much of a guess was right.
        return hmac.compare_digest(
            self._value.encode("utf-8", "surrogatepass"),
            other_value.encode("utf-8", "surrogatepass"),
        )

    # Unhashable: equal to a str, a Secret would need the str's hash, an oracle on its value.
    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it sealed with weflux.crypto instead")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it sealed with weflux.crypto instead")

    def __copy__(self) -> Secret:
        return self  # immutable: copies may share it (and copy must not go through pickle)

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    @classmethod
    def _coerce(cls, value: Any) -> Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(value)
        raise ValueError("expected a string")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Pydantic fields of this type accept a str and always serialise masked."""
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _mask, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """A write-only password string, as pydantic's own SecretStr."""
        return {"type": "string", "format": "password", "writeOnly": True}


# Every attribute a LogRecord has of its own; anything else came through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
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
            if key in _STANDARD_ATTRIBUTES or key.startswith("_"):
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
