"""What is stored of recovery codes: keyed hashes naming their key (auth.recovery_codes)."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

from weflux.auth import recovery_codes, totp
from weflux.crypto.keyring import KeyRing

OLD_KEY = os.urandom(32)
OLD_RING = KeyRing([("old", OLD_KEY)])
NEW_RING = KeyRing([("new", os.urandom(32)), ("old", OLD_KEY)])
USER = uuid.uuid4()


def test_a_stored_code_is_a_keyed_hash_that_names_its_key() -> None:
    """Given ten new codes, when they are stored, then each is `<kid>:<HMAC>`, none holds
    the code or its plain SHA-256 (searchable offline), and each matches its code alone,
    whatever its case, dashes or spaces."""
    codes = totp.new_recovery_codes()

    stored = recovery_codes.stored_form(OLD_RING, USER, codes)

    values = stored.split()
    assert len(values) == 10
    assert all(value.startswith("old:") and len(value) == 4 + 64 for value in values)
    for code in codes:
        assert code not in stored
        assert recovery_codes.digest(code) not in stored
    assert recovery_codes.matching(OLD_RING, USER, stored, codes[2]) == values[2]
    spelled = f" {codes[5].upper().replace('-', ' ')} "
    assert recovery_codes.matching(OLD_RING, USER, stored, spelled) == values[5]
    assert recovery_codes.matching(OLD_RING, USER, stored, "aaaaa-bbbbb") is None


def test_a_stored_code_is_bound_to_its_account() -> None:
    """Given one account's stored codes copied onto another account, then they match
    nothing there."""
    codes = totp.new_recovery_codes()
    stored = recovery_codes.stored_form(OLD_RING, USER, codes)

    assert recovery_codes.matching(OLD_RING, uuid.uuid4(), stored, codes[0]) is None


def test_codes_keep_their_key_across_a_rotation_and_a_lost_key_matches_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given codes stored under key `old`, when `new` becomes the primary (old kept), then
    they still match, and new codes are made under `new`; when `old` is dropped, they
    match nothing (no error) and the log names the key, never a code."""
    old_codes = totp.new_recovery_codes()
    new_codes = totp.new_recovery_codes()
    stored = " ".join(
        (
            recovery_codes.stored_form(OLD_RING, USER, old_codes),
            recovery_codes.stored_form(NEW_RING, USER, new_codes),
        )
    )

    assert recovery_codes.matching(NEW_RING, USER, stored, old_codes[0]) is not None
    assert recovery_codes.matching(NEW_RING, USER, stored, new_codes[0]) is not None
    assert recovery_codes.count_by_kid(stored) == {"old": 10, "new": 10}

    without_old = KeyRing([("new", os.urandom(32))])
    with caplog.at_level(logging.WARNING, logger="weflux.auth.recovery_codes"):
        assert recovery_codes.matching(without_old, USER, stored, old_codes[0]) is None
    assert any(r.__dict__.get("kid") == "old" for r in caplog.records)
    assert old_codes[0] not in caplog.text


def test_a_plain_sha256_of_before_0037_matches_nothing() -> None:
    """Given a value in the plain form of before migration 0037 (which wraps them all),
    then it matches nothing: no searchable form is ever accepted."""
    code = totp.new_recovery_codes()[0]

    assert recovery_codes.matching(OLD_RING, USER, recovery_codes.digest(code), code) is None
    assert recovery_codes.count_by_kid(recovery_codes.digest(code)) == {None: 1}
