"""The registry of secret values: every spelling redacted, bounded, no plaintext kept."""

from __future__ import annotations

import json
import pickle
import secrets
from urllib.parse import quote

import pytest

from tests.fixtures.secrets import unregistered_value
from weflux.crypto.redaction import REDACTED, RedactionRegistry, redact, register_secret
from weflux.crypto.secret import Secret

MASK = "********"


def test_registered_values_are_redacted_in_every_common_spelling() -> None:
    value = unregistered_value() + "/+ 'q\"\\é"
    registry = RedactionRegistry()
    registry.register(value)
    texts = [
        f"plain {value} text",
        f"in a repr: {{'token': {value!r}}}",
        f"in json: {json.dumps({'token': value})}",
        f"in json, utf-8: {json.dumps({'token': value}, ensure_ascii=False)}",
        f"in a url: https://example.com/?access_token={quote(value, safe='')}&x=1",
        f"twice {value}{value}",
    ]
    for text in texts:
        redacted = registry.redact(text)
        assert REDACTED in redacted
        assert value not in redacted
        assert value[:12] not in redacted
    assert registry.redact("nothing here") == "nothing here"


def test_short_values_are_not_registered() -> None:
    registry = RedactionRegistry()
    registry.register("12345")
    assert len(registry) == 0
    assert registry.redact("pin 12345") == "pin 12345"


def test_the_longest_secret_wins() -> None:
    registry = RedactionRegistry()
    registry.register("abcdef")
    registry.register("abcdefghij")
    assert registry.redact("x abcdefghij y abcdef z") == f"x {REDACTED} y {REDACTED} z"


def test_the_registry_is_bounded_and_forgets_the_least_recent() -> None:
    registry = RedactionRegistry(max_size=3)
    for value in ("first-secret", "second-secret", "third-secret"):
        registry.register(value)
    registry.register("first-secret")  # seen again: now the most recent
    registry.register("fourth-secret")
    assert len(registry) == 3
    assert registry.redact("second-secret") == "second-secret"
    for value in ("first-secret", "third-secret", "fourth-secret"):
        assert registry.redact(value) == REDACTED


def test_the_registry_keeps_no_plaintext() -> None:
    registry = RedactionRegistry()
    value = unregistered_value()
    registry.register(value)
    assert value not in repr(registry.__dict__)
    with pytest.raises(TypeError):
        pickle.dumps(registry)


def test_every_secret_is_registered_process_wide() -> None:
    value = unregistered_value()
    assert redact(value) == value
    Secret(value)
    assert redact(f"x {value} y") == f"x {REDACTED} y"
    other = unregistered_value()
    register_secret(other)
    assert redact(other) == REDACTED


def test_redaction_of_large_text_with_a_full_registry() -> None:
    """A full registry still finds the one secret in a long line (its speed: bench.micro)."""
    registry = RedactionRegistry()
    for _ in range(10_000):
        registry.register(secrets.token_hex(20))
    value = unregistered_value()
    registry.register(value)
    text = ("an ordinary log line with ids 0123456789 and words " * 40) + value
    redacted = registry.redact(text)
    assert redacted.endswith(REDACTED)
    assert value not in redacted
