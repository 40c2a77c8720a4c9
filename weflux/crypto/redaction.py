"""The secret values a process knows, and their scrubbing from text.

Every `Secret` registers its plaintext here (so does the key ring for each value it
opens); `weflux.logs.SecretRedactingFilter` scrubs registered values from log records,
in case a revealed value is ever logged by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import NoReturn
from urllib.parse import quote

REDACTED = "[REDACTED]"

# Shorter values would match ordinary words and numbers and redact half of every log.
MIN_REDACTED_LENGTH = 6
MAX_REGISTERED_SECRETS = 10_000


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
