"""The backup file: a plain header, then AES-256-GCM chunks bound to their place in the file.

Layout (integers big-endian):

    b"WEFLUXBK" | header length (4) | header (JSON) | digest (32) | chunk | chunk | ...
    chunk = ciphertext length (4) | ciphertext and GCM tag

The header names the key id, the schema revision, the time and a random salt. Each
backup is sealed under its own key, HKDF-SHA256(backup key, salt, kid). Chunk `i` is
sealed with the nonce `i (11 bytes) | final (1 byte)` and the associated data
`SHA-256(magic | header) | i | final`, so an edited header, a chunk moved, dropped,
duplicated or taken from another file, and a file cut after any chunk but the final
one all fail to open. The final chunk holds the trailer (row counts and the SHA-256 of
the plaintext); the digest slot after the header repeats that digest, written last,
and must agree with the authenticated one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"WEFLUXBK"
FORMAT_VERSION = 1
SUFFIX = ".wfxbak"
CHUNK_BYTES = 1 << 20  # plaintext per chunk
TAG_BYTES = 16
SALT_BYTES = 32
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 16_384
_MAX_CHUNK = CHUNK_BYTES + TAG_BYTES
_LENGTH = 4

KeyRing = list[tuple[str, bytes]]


class BackupError(Exception):
    """A backup cannot be written, read or restored; the message says why, never a key."""


@dataclass(frozen=True)
class BackupHeader:
    """What a backup says of itself before it is opened."""

    kid: str
    revision: str
    created_at: datetime
    dialect: str
    salt: bytes
    raw: bytes  # the header's bytes as written: part of every chunk's associated data

    @classmethod
    def new(cls, *, kid: str, revision: str, created_at: datetime, dialect: str) -> BackupHeader:
        salt = secrets.token_bytes(SALT_BYTES)
        fields = {
            "format": FORMAT_VERSION,
            "kid": kid,
            "revision": revision,
            "created_at": created_at.isoformat(),
            "dialect": dialect,
            "salt": base64.b64encode(salt).decode("ascii"),
        }
        raw = json.dumps(fields, sort_keys=True).encode()
        return cls(kid, revision, created_at, dialect, salt, raw)

    @classmethod
    def parse(cls, raw: bytes) -> BackupHeader:
        try:
            fields = json.loads(raw)
            if fields["format"] != FORMAT_VERSION:
                raise BackupError(f"unsupported backup format {fields['format']!r}")
            salt = base64.b64decode(fields["salt"], validate=True)
            created_at = datetime.fromisoformat(fields["created_at"])
            header = cls(
                str(fields["kid"]),
                str(fields["revision"]),
                created_at,
                str(fields["dialect"]),
                salt,
                raw,
            )
        except BackupError:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BackupError("the header is not a Weflux backup header") from None
        if len(salt) != SALT_BYTES or created_at.tzinfo is None:
            raise BackupError("the header is not a Weflux backup header")
        return header

    def chunk_key(self, key: bytes) -> AESGCM:
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=self.salt,
            info=b"weflux-backup-v1|" + self.kid.encode(),
        ).derive(key)
        return AESGCM(derived)

    def binding(self) -> bytes:
        return hashlib.sha256(MAGIC + self.raw).digest()


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _aad(binding: bytes, index: int, final: bool) -> bytes:
    return binding + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class BackupWriter:
    """Seals a stream of plaintext into `path` (via `path.partial`, renamed when complete)."""

    def __init__(self, path: Path, header: BackupHeader, key: bytes) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.header = header
        self._aead = header.chunk_key(key)
        self._binding = header.binding()
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._index = 0
        self.bytes_written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._file.write(MAGIC + len(header.raw).to_bytes(_LENGTH, "big") + header.raw)
        self._digest_at = self._file.tell()
        self._file.write(bytes(DIGEST_BYTES))

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), final=False)
            del self._buffer[:CHUNK_BYTES]

    def _seal(self, plaintext: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(
            _nonce(self._index, final), plaintext, _aad(self._binding, self._index, final)
        )
        self._file.write(len(sealed).to_bytes(_LENGTH, "big") + sealed)
        self.bytes_written += _LENGTH + len(sealed)
        self._index += 1

    def finish(self, trailer: dict[str, Any]) -> str:
        """Seal the rest and the trailer, fill in the digest, and move the file in place."""
        if self._buffer:
            self._seal(bytes(self._buffer), final=False)
            self._buffer.clear()
        digest = self._digest.digest()
        trailer = trailer | {"digest": digest.hex(), "chunks": self._index + 1}
        self._seal(json.dumps(trailer, sort_keys=True).encode(), final=True)
        self._file.seek(self._digest_at)
        self._file.write(digest)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return digest.hex()

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


def read_header(path: Path) -> tuple[BackupHeader, bytes]:
    """The header and the digest slot of a backup, without any key."""
    with path.open("rb") as handle:
        return _read_header(handle)


def _read_exactly(handle: IO[bytes], size: int, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise BackupError(f"the file ends inside {what}: it was cut short")
    return data


def _read_header(handle: IO[bytes]) -> tuple[BackupHeader, bytes]:
    if handle.read(len(MAGIC)) != MAGIC:
        raise BackupError("not a Weflux backup (the file does not start with WEFLUXBK)")
    length = int.from_bytes(_read_exactly(handle, _LENGTH, "the header"), "big")
    if length > MAX_HEADER_BYTES:
        raise BackupError("the header is not a Weflux backup header")
    header = BackupHeader.parse(_read_exactly(handle, length, "the header"))
    return header, _read_exactly(handle, DIGEST_BYTES, "the header")


def key_for(header: BackupHeader, keys: KeyRing) -> bytes:
    for kid, key in keys:
        if kid == header.kid:
            return key
    raise BackupError(
        f"the backup was sealed with key `{header.kid}`, which WEFLUX_BACKUP_KEYS does not hold"
    )


class BackupReader:
    """Opens a backup chunk by chunk; every chunk is authenticated before it is yielded."""

    def __init__(self, path: Path, keys: KeyRing) -> None:
        self.path = path
        self.header, self._digest_slot = read_header(path)
        self._aead = self.header.chunk_key(key_for(self.header, keys))
        self.trailer: dict[str, Any] | None = None

    def chunks(self) -> Iterator[bytes]:
        """The plaintext, chunk by chunk; BackupError once anything does not authenticate.

        The trailer is checked after the last chunk: a consumer must not act on the data
        (commit a restore, say) before this iterator has ended without an error.
        """
        binding = self.header.binding()
        digest = hashlib.sha256()
        with self.path.open("rb") as handle:
            _read_header(handle)
            index = 0
            while True:
                length_bytes = handle.read(_LENGTH)
                if not length_bytes:
                    raise BackupError(
                        f"the file ends after chunk {index - 1} without its final chunk: "
                        "it was cut short"
                    )
                if len(length_bytes) < _LENGTH:
                    raise BackupError(f"the file ends inside chunk {index}: it was cut short")
                length = int.from_bytes(length_bytes, "big")
                if not TAG_BYTES <= length <= _MAX_CHUNK:
                    raise BackupError(
                        f"chunk {index} has an impossible length: the file was altered"
                    )
                sealed = _read_exactly(handle, length, f"chunk {index}")
                plaintext, final = self._open(sealed, index, binding)
                if final:
                    if handle.read(1):
                        raise BackupError("data follows the final chunk: the file was altered")
                    self._check_trailer(plaintext, digest.digest(), index)
                    return
                digest.update(plaintext)
                yield plaintext
                index += 1

    def _open(self, sealed: bytes, index: int, binding: bytes) -> tuple[bytes, bool]:
        for final in (False, True):
            try:
                plaintext = self._aead.decrypt(
                    _nonce(index, final), sealed, _aad(binding, index, final)
                )
            except InvalidTag:
                continue
            return plaintext, final
        raise BackupError(
            f"chunk {index} does not authenticate: the file was altered or its chunks "
            f"reordered, or it was sealed with another key named `{self.header.kid}`"
        )

    def _check_trailer(self, plaintext: bytes, digest: bytes, index: int) -> None:
        try:
            trailer = json.loads(plaintext)
            stated = bytes.fromhex(trailer["digest"])
            chunks = int(trailer["chunks"])
        except (ValueError, KeyError, TypeError):
            raise BackupError("the final chunk is not a trailer: the file was altered") from None
        if stated != digest or chunks != index + 1:
            raise BackupError("the trailer does not match the data: the file was altered")
        if self._digest_slot != digest:
            raise BackupError("the header's digest does not match the data: the file was altered")
        self.trailer = trailer
