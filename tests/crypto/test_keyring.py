"""AES-256-GCM envelopes: bound to their row, fail closed, and rotate between keys."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.settings import make_settings
from weflux.config import generate_encryption_key_entry, parse_encryption_keys
from weflux.crypto.keyring import DecryptionError, KeyRing, SecretContext
from weflux.crypto.secret import Secret

PLAINTEXT = "EAAGm0PX4ZCpsBAsecret-access-token"


def _key() -> bytes:
    return os.urandom(32)


def _context(**overrides: object) -> SecretContext:
    values: dict[str, object] = {
        "org_id": uuid.uuid4(),
        "table": "whatsapp_accounts",
        "column": "access_token_enc",
        "row_id": uuid.uuid4(),
    }
    return SecretContext(**(values | overrides))  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip(text: str, index: int) -> str:
    """The base64url field `text` with one bit of its byte at `index` flipped."""
    data = bytearray(_unb64(text))
    data[index] ^= 0x01
    return _b64(bytes(data))


def _assert_leaks_nothing(error: DecryptionError, envelope: str, keys: list[bytes]) -> None:
    message = str(error)
    assert message.startswith("the secret could not be decrypted: ")
    assert PLAINTEXT not in message
    assert envelope not in message
    for part in envelope.split(".")[2:]:
        assert part not in message
    for key in keys:
        for spelling in (base64.b64encode(key).decode(), _b64(key), key.hex()):
            assert spelling not in message
    # Not hidden in the chain either.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_round_trip_returns_a_secret() -> None:
    ring = KeyRing([("k1", _key())])
    context = _context()
    opened = ring.decrypt(ring.encrypt(PLAINTEXT, context), context)
    assert isinstance(opened, Secret)
    assert opened.reveal() == PLAINTEXT


@pytest.mark.parametrize("plaintext", ["", "ü ñ 中文 🔑", "x" * 10_000])
def test_round_trip_of_any_text(plaintext: str) -> None:
    ring = KeyRing([("k1", _key())])
    context = _context()
    assert ring.decrypt(ring.encrypt(plaintext, context), context).reveal() == plaintext


def test_a_fresh_nonce_every_time() -> None:
    ring = KeyRing([("k1", _key())])
    context = _context()
    envelopes = [ring.encrypt(PLAINTEXT, context) for _ in range(50)]
    assert len(set(envelopes)) == 50
    assert len({envelope.split(".")[2] for envelope in envelopes}) == 50


def test_the_envelope_is_versioned_and_names_its_key() -> None:
    ring = KeyRing([("prod-2026.1", _key()), ("k0", _key())])
    envelope = ring.encrypt(PLAINTEXT, _context())
    assert envelope.startswith("v1.prod-2026.1.")
    nonce, sealed = envelope.removeprefix("v1.prod-2026.1.").split(".")
    assert len(_unb64(nonce)) == 12
    assert len(_unb64(sealed)) == len(PLAINTEXT.encode()) + 16
    assert PLAINTEXT not in envelope
    assert "=" not in envelope


@pytest.mark.parametrize(
    "change",
    [
        {"row_id": uuid.uuid4()},
        {"column": "app_secret_enc"},
        {"table": "smtp_settings"},
        {"org_id": uuid.uuid4()},
    ],
    ids=["another row", "another column", "another table", "another workspace"],
)
def test_an_envelope_moved_elsewhere_does_not_open(change: dict[str, object]) -> None:
    key = _key()
    ring = KeyRing([("k1", key)])
    context = _context()
    envelope = ring.encrypt(PLAINTEXT, context)
    with pytest.raises(DecryptionError) as error:
        ring.decrypt(envelope, replace(context, **change))  # type: ignore[arg-type]
    assert "tampered with or belongs to another row" in str(error.value)
    _assert_leaks_nothing(error.value, envelope, [key])


def _tampered(envelope: str, what: str) -> str:
    version, kid, nonce, sealed = envelope.split(".")
    if what == "nonce":
        return ".".join((version, kid, _flip(nonce, 3), sealed))
    if what == "ciphertext":
        return ".".join((version, kid, nonce, _flip(sealed, 0)))
    if what == "tag":
        return ".".join((version, kid, nonce, _flip(sealed, -1)))
    if what == "kid":
        return ".".join((version, "k2", nonce, sealed))
    if what == "version":
        return ".".join(("v2", kid, nonce, sealed))
    if what == "truncated":
        return ".".join((version, kid, nonce, _b64(_unb64(sealed)[:-1])))
    if what == "tag only":
        return ".".join((version, kid, nonce, _b64(_unb64(sealed)[-16:])))
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["nonce", "ciphertext", "tag", "kid", "version", "truncated", "tag only"]
)
def test_tampering_fails_closed(what: str) -> None:
    keys = [_key(), _key()]
    # Both ids are known: an edited key id must fail on the tag, not for being unknown.
    ring = KeyRing([("k1", keys[0]), ("k2", keys[1])])
    context = _context()
    envelope = ring.encrypt(PLAINTEXT, context)
    with pytest.raises(DecryptionError) as error:
        ring.decrypt(_tampered(envelope, what), context)
    _assert_leaks_nothing(error.value, envelope, keys)
    if what == "version":
        assert "unsupported envelope version `v2`" in str(error.value)


def test_an_edited_key_id_fails_even_when_both_keys_are_equal() -> None:
    """The key id is authenticated, not merely used to pick the key."""
    key = _key()
    ring = KeyRing([("k1", key), ("k2", key)])
    context = _context()
    envelope = ring.encrypt(PLAINTEXT, context)
    with pytest.raises(DecryptionError, match="tampered"):
        ring.decrypt(envelope.replace("v1.k1.", "v1.k2.", 1), context)


@pytest.mark.parametrize(
    "envelope",
    [
        "",
        PLAINTEXT,
        "v1",
        "v1.k1",
        "v1.k1.AAAA",
        "v1..AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAAAAAAAAAAAAAA.AAAA",  # shorter than a tag
        "v1.k1.AAAAAAAAAAAAAAAA==.AAAAAAAAAAAAAAAAAAAAAA",  # padding
        "v1.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAA+",  # not base64url
        "v1.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAB",  # non-canonical last character
        "v1.k1.AAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",  # nonce of 15 bytes
        "V1.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.bad kid.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA" + "A" * 200_000,
    ],
)
def test_malformed_envelopes_fail_closed(envelope: str) -> None:
    ring = KeyRing([("k1", _key())])
    with pytest.raises(DecryptionError) as error:
        ring.decrypt(envelope, _context())
    message = str(error.value)
    assert PLAINTEXT not in message
    if len(envelope) > 4:
        assert envelope not in message
    assert ring.needs_rotation(envelope)


def test_a_value_that_is_not_a_string_fails_closed() -> None:
    ring = KeyRing([("k1", _key())])
    with pytest.raises(DecryptionError, match="not a well-formed envelope"):
        ring.decrypt(b"v1.k1.x.y", _context())  # type: ignore[arg-type]


def test_an_unknown_key_id_is_named() -> None:
    old = KeyRing([("k1", _key())])
    new = KeyRing([("k2", _key())])
    context = _context()
    envelope = old.encrypt(PLAINTEXT, context)
    with pytest.raises(DecryptionError) as error:
        new.decrypt(envelope, context)
    assert str(error.value) == "the secret could not be decrypted: unknown key id `k1`"
    assert error.value.kid == "k1"


def test_a_different_key_under_the_same_id_does_not_open() -> None:
    context = _context()
    envelope = KeyRing([("k1", _key())]).encrypt(PLAINTEXT, context)
    with pytest.raises(DecryptionError, match="tampered"):
        KeyRing([("k1", _key())]).decrypt(envelope, context)


def test_old_keys_still_open_after_a_new_primary_is_added() -> None:
    old_key, new_key = _key(), _key()
    old = KeyRing([("old", old_key)])
    context = _context()
    envelope = old.encrypt(PLAINTEXT, context)
    rotated = KeyRing([("new", new_key), ("old", old_key)])
    assert rotated.primary_kid == "new"
    assert rotated.kids == ("new", "old")
    assert rotated.decrypt(envelope, context).reveal() == PLAINTEXT
    assert rotated.needs_rotation(envelope)
    fresh = rotated.encrypt(PLAINTEXT, context)
    assert fresh.startswith("v1.new.")
    assert not rotated.needs_rotation(fresh)
    # The old ring cannot open what the new primary sealed.
    with pytest.raises(DecryptionError, match="unknown key id `new`"):
        old.decrypt(fresh, context)


def test_from_settings_uses_the_configured_keys(tmp_path: Path) -> None:
    entries = f"{generate_encryption_key_entry('b')},{generate_encryption_key_entry('a')}"
    settings = make_settings(tmp_path, encryption_keys=entries)
    ring = KeyRing.from_settings(settings)
    assert ring.primary_kid == "b"
    assert ring.kids == ("b", "a")
    context = _context()
    other = KeyRing(parse_encryption_keys(entries)[1:])
    assert ring.decrypt(other.encrypt(PLAINTEXT, context), context).reveal() == PLAINTEXT


def test_repr_shows_key_ids_only() -> None:
    key = _key()
    ring = KeyRing([("k1", key), ("k0", _key())])
    text = repr(ring)
    assert text == "KeyRing(primary='k1', kids=['k1', 'k0'])"
    assert base64.b64encode(key).decode() not in text
    assert key.hex() not in text


def test_a_key_ring_is_neither_pickled_nor_copied_apart() -> None:
    ring = KeyRing([("k1", _key())])
    with pytest.raises(TypeError):
        pickle.dumps(ring)
    assert copy.copy(ring) is ring
    assert copy.deepcopy(ring) is ring


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "at least one key"),
        ([("k1", b"short")], "exactly 32 bytes"),
        ([("k1", "x" * 32)], "exactly 32 bytes"),
        ([("k1", os.urandom(32)), ("k1", os.urandom(32))], "appears twice"),
        ([("bad kid", os.urandom(32))], "key id"),
        ([("k|1", os.urandom(32))], "key id"),
        ([("", os.urandom(32))], "key id"),
    ],
)
def test_bad_key_rings_are_refused(entries: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        KeyRing(entries)
    for _, key in entries:
        if isinstance(key, bytes) and len(key) == 32:
            assert base64.b64encode(key).decode() not in str(error.value)


def test_only_text_is_encrypted() -> None:
    ring = KeyRing([("k1", _key())])
    with pytest.raises(TypeError):
        ring.encrypt(Secret(PLAINTEXT), _context())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        ring.encrypt("x" * 70_000, _context())
    with pytest.raises(ValueError, match="Unicode") as error:
        ring.encrypt("abc\ud800def", _context())
    assert "abc" not in str(error.value)


def test_the_associated_data_is_canonical() -> None:
    org_id = uuid.UUID("11111111-1111-1111-1111-111111111111")
    row_id = uuid.UUID("22222222-2222-2222-2222-222222222222")
    context = SecretContext(org_id, "smtp_settings", "password_enc", row_id)
    assert context.aad() == (
        b"weflux:v1|org=11111111-1111-1111-1111-111111111111|table=smtp_settings"
        b"|column=password_enc|row=22222222-2222-2222-2222-222222222222"
    )
    # Swapping the table and column must not encode alike.
    swapped = SecretContext(org_id, "password_enc", "smtp_settings", row_id)
    assert swapped.aad() != context.aad()


@pytest.mark.parametrize(
    "change",
    [
        {"table": "whatsapp_accounts|x"},
        {"column": "Access_Token"},
        {"column": ""},
        {"table": "a b"},
        {"org_id": "11111111-1111-1111-1111-111111111111"},
    ],
)
def test_contexts_refuse_ambiguous_parts(change: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        _context(**change)
