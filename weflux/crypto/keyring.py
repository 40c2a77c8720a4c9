"""AES-256-GCM envelopes for stored secrets, bound to the row and column that hold them.

An envelope reads `v1.<kid>.<nonce>.<ciphertext+tag>` (nonce and ciphertext in
unpadded base64url). Its associated data binds the version, the key id and the
`SecretContext` (workspace, table, column, row), so an envelope copied to another
row, column, table or workspace, or one whose header was edited, fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from weflux.config import KEY_ID_PATTERN, Settings
from weflux.crypto.redaction import register_secret
from weflux.crypto.secret import Secret

ENVELOPE_VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# Secrets are tokens and passwords; a bound keeps a corrupt value from costing much.
MAX_PLAINTEXT_BYTES = 65_536
_MAX_ENVELOPE_CHARS = 200 + 4 * (MAX_PLAINTEXT_BYTES + TAG_BYTES) // 3

_AAD_VERSION = "weflux:v1"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_VERSION = re.compile(r"^v[0-9]{1,3}$")


@dataclass(frozen=True)
class SecretContext:
    """Where a secret is stored: the associated data its envelope is bound to."""

    org_id: uuid.UUID
    table: str
    column: str
    row_id: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.org_id, uuid.UUID) or not isinstance(self.row_id, uuid.UUID):
            raise TypeError("org_id and row_id must be UUIDs")
        for name in (self.table, self.column):
            if not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise ValueError(f"`{name}` is not a lower-case SQL identifier")

    def aad(self) -> bytes:
        """The canonical, unambiguous encoding of this context."""
        # Fixed field order, `|` between fields, and values that cannot contain `|`
        # (lower-case identifiers, canonical UUIDs): two contexts never encode alike.
        return "|".join(
            (
                _AAD_VERSION,
                f"org={self.org_id}",
                f"table={self.table}",
                f"column={self.column}",
                f"row={self.row_id}",
            )
        ).encode("ascii")


class DecryptionError(Exception):
    """A stored secret could not be decrypted; the message never holds key, value or envelope."""

    def __init__(self, reason: str, *, kid: str | None = None) -> None:
        super().__init__(f"the secret could not be decrypted: {reason}")
        self.reason = reason
        self.kid = kid


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url: None for any other alphabet, padding or spelling."""
    if not _BASE64URL.match(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # One spelling per value: reject non-canonical trailing bits.
    return data if _b64encode(data) == text else None


def _malformed() -> DecryptionError:
    return DecryptionError("the stored value is not a well-formed envelope")


def _parse(envelope: object) -> tuple[str, bytes, bytes]:
    """The key id, nonce and sealed bytes of an envelope; DecryptionError if malformed."""
    if not isinstance(envelope, str) or len(envelope) > _MAX_ENVELOPE_CHARS:
        raise _malformed()
    version, separator, rest = envelope.partition(".")
    if not separator:
        raise _malformed()
    if version != ENVELOPE_VERSION:
        if _VERSION.match(version):
            raise DecryptionError(f"unsupported envelope version `{version}`")
        raise _malformed()
    # Key ids may contain dots; nonce and ciphertext (base64url) never do.
    parts = rest.rsplit(".", 2)
    if len(parts) != 3 or not KEY_ID_PATTERN.match(parts[0]):
        raise _malformed()
    kid, nonce_text, sealed_text = parts
    nonce = _b64decode(nonce_text)
    sealed = _b64decode(sealed_text)
    if nonce is None or len(nonce) != NONCE_BYTES or sealed is None or len(sealed) < TAG_BYTES:
        raise _malformed()
    return kid, nonce, sealed


def _aad(kid: str, context: SecretContext) -> bytes:
    # The header is authenticated too: an edited version or key id fails the tag.
    return f"{ENVELOPE_VERSION}|{kid}|".encode("ascii") + context.aad()


class KeyRing:
    """The encryption keys: the first (primary) seals, every one of them opens."""

    __slots__ = ("_ciphers", "_mac_keys", "_primary")

    def __init__(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            raise ValueError("a key ring needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        mac_keys: dict[str, bytes] = {}
        for kid, key in entries:
            if not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid):
                # Not echoed: a key pasted in the wrong place must not end up in a log.
                raise ValueError("a key id is 1 to 32 letters, digits, `_`, `.` or `-`")
            if kid in ciphers:
                raise ValueError(f"key id `{kid}` appears twice")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"key `{kid}` must be exactly {KEY_BYTES} bytes")
            ciphers[kid] = AESGCM(key)
            # A key of its own for keyed hashes, derived one way: a hash never helps
            # against the encryption key.
            mac_keys[kid] = hmac.new(key, b"weflux keyed-hash key v1", hashlib.sha256).digest()
        self._ciphers = ciphers
        self._mac_keys = mac_keys
        self._primary = entries[0][0]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The key ring of `WEFLUX_ENCRYPTION_KEYS`."""
        return cls(settings.encryption_key_ring)

    @property
    def primary_kid(self) -> str:
        """The id of the key new envelopes are sealed with."""
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id, the primary first."""
        return tuple(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(primary={self._primary!r}, kids={list(self._ciphers)!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a KeyRing cannot be pickled")

    def __copy__(self) -> KeyRing:
        return self  # immutable; and copying must not go through pickle

    def __deepcopy__(self, memo: dict[int, object]) -> KeyRing:
        return self

    def encrypt(self, plaintext: str, context: SecretContext) -> str:
        """Seal `plaintext` under the primary key for `context`; a fresh nonce every time."""
        if not isinstance(plaintext, str):
            raise TypeError("only a str can be encrypted; reveal() a Secret first")
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the secret is not valid Unicode text") from None
        if len(data) > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"a secret may be at most {MAX_PLAINTEXT_BYTES} bytes")
        # Whoever hands us a plaintext holds a secret: redact it from logs from now on.
        register_secret(plaintext)
        kid = self._primary
        # 96 random bits per envelope: safe for far more envelopes per key than we seal.
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, data, _aad(kid, context))
        return ".".join((ENVELOPE_VERSION, kid, _b64encode(nonce), _b64encode(sealed)))

    def decrypt(self, envelope: str, context: SecretContext) -> Secret:
        """Open an envelope sealed for `context`; DecryptionError on anything amiss."""
        kid, nonce, sealed = _parse(envelope)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(f"unknown key id `{kid}`", kid=kid)
        try:
            data = cipher.decrypt(nonce, sealed, _aad(kid, context))
        except InvalidTag:
            raise DecryptionError(
                "the ciphertext was tampered with or belongs to another row "
                f"(or key `{kid}` is not the key it was sealed with)",
                kid=kid,
            ) from None
        try:
            return Secret(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecryptionError("the decrypted value is not text", kid=kid) from None

    def keyed_hash(self, purpose: str, value: str, kid: str | None = None) -> tuple[str, str]:
        """(key id, hex HMAC-SHA256 of `value` for `purpose`) under `kid` (the primary).

        Lets a record name a person without holding their identifier (the erasure
        ledger): whoever holds the key ring and the identifier can recognise it.
        """
        kid = kid or self._primary
        key = self._mac_keys.get(kid)
        if key is None:
            raise DecryptionError(f"unknown key id `{kid}`", kid=kid)
        message = purpose.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return kid, hmac.new(key, message, hashlib.sha256).hexdigest()

    def needs_rotation(self, envelope: str) -> bool:
        """Whether `envelope` is anything but a well-formed envelope of the primary key."""
        # A malformed value answers True: rotation then visits it and reports it as
        # failed instead of counting it as current. Only the header is read here; the
        # tag is checked when the value is decrypted.
        try:
            kid, _, _ = _parse(envelope)
        except DecryptionError:
            return True
        return kid != self._primary
