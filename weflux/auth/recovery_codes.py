"""What is stored of recovery codes: a keyed hash per code, under a key of the key ring.

A code has 50 random bits: its plain SHA-256 (what was stored before migration 0037)
falls to an offline search on a GPU in hours. So each code is stored as
`<kid>:<hex HMAC-SHA256>` under the key ring's keyed-hash key `kid`
(`KeyRing.keyed_hash`, purpose `PURPOSE`) of `<user id>:<SHA-256 of the code>`: without
the key ring a stored value gives nothing to search, and a value copied to another
account does not match there. The SHA-256 inside is the earlier stored form, so
migration 0037 wraps an existing value without knowing its code.

Key rotation cannot re-key a value (the code is not known); a value keeps its kid, which
must stay in WEFLUX_ENCRYPTION_KEYS while any value names it (`weflux keys rotate`
counts them). A value whose key is gone matches nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections import Counter
from collections.abc import Iterable

from weflux.crypto.keyring import DecryptionError, KeyRing

log = logging.getLogger(__name__)

# The keyed hash's purpose string: a recovery-code hash means nothing elsewhere.
PURPOSE = "two-factor/recovery-code"
SEPARATOR = ":"


def digest(code: str) -> str:
    """The SHA-256 of a code (case, spaces and dashes do not matter): the keyed hash's input."""
    normal = "".join(ch for ch in code.lower() if ch.isalnum())
    return hashlib.sha256(f"weflux-recovery:{normal}".encode()).hexdigest()


def keyed(keyring: KeyRing, user_id: uuid.UUID, code_digest: str, kid: str | None = None) -> str:
    """The stored form of one code's digest: `<kid>:<hex HMAC>` (the primary key's kid)."""
    kid, mac = keyring.keyed_hash(PURPOSE, f"{user_id}{SEPARATOR}{code_digest}", kid)
    return f"{kid}{SEPARATOR}{mac}"


def stored_form(keyring: KeyRing, user_id: uuid.UUID, codes: Iterable[str]) -> str:
    """What `users.recovery_code_hashes` holds for `codes`: their keyed hashes, space-separated."""
    return " ".join(keyed(keyring, user_id, digest(code)) for code in codes)


def kid_of(value: str) -> str | None:
    """The key id a stored value names; None for an earlier plain SHA-256."""
    kid, separator, _ = value.rpartition(SEPARATOR)
    return kid if separator else None


def matching(keyring: KeyRing, user_id: uuid.UUID, stored: str, code: str) -> str | None:
    """The stored value `code` matches, if any; every value is compared (constant time).

    A value under a key the ring no longer holds, or in the earlier plain form (which
    migration 0037 wraps), matches nothing.
    """
    presented = digest(code)
    by_kid: dict[str, str | None] = {}
    found: str | None = None
    for value in stored.split():
        kid = kid_of(value)
        if kid is None:
            continue
        if kid not in by_kid:
            try:
                by_kid[kid] = keyed(keyring, user_id, presented, kid)
            except DecryptionError:
                log.warning(
                    "a recovery code hash names a key the key ring does not hold",
                    extra={"user_id": str(user_id), "kid": kid},
                )
                by_kid[kid] = None
        expected = by_kid[kid]
        # No early exit: the time does not tell which of the codes matched.
        if expected is not None and hmac.compare_digest(expected, value) and found is None:
            found = value
    return found


def count_by_kid(stored: str | None) -> Counter[str | None]:
    """How many stored values name each key id (None: earlier plain SHA-256 values)."""
    return Counter(kid_of(value) for value in (stored or "").split())
