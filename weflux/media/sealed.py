"""The encrypted media file format: AES-256-GCM in fixed-size chunks, readable by range.

A file is `MAGIC` then one sealed chunk per CHUNK bytes of plaintext (the last one
shorter, and one empty chunk for an empty file). Each chunk is `ciphertext+tag`,
sealed under the file's own data key with the chunk's index as its nonce (a key seals
exactly one file, so a counter nonce never repeats) and, as associated data, the media
file's id, the index and whether it is the last chunk: a chunk moved, dropped, swapped
with another file's or a file cut short fails to decrypt. Fixed-size chunks put
plaintext byte `n` in chunk `n // CHUNK` at a known offset, so a range request reads
and decrypts only the chunks it covers (docs/inbox.md#media).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"WFXMED1\n"
CHUNK = 64 * 1024
TAG = 16
SEALED_CHUNK = CHUNK + TAG
_AAD = struct.Struct(">Q?")


class MediaIntegrityError(Exception):
    """A stored media file that does not decrypt: altered, truncated, or another file's."""


def new_data_key() -> bytes:
    """A fresh 256-bit data key, for one file only."""
    return AESGCM.generate_key(bit_length=256)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(file_id: uuid.UUID, index: int, final: bool) -> bytes:
    return file_id.bytes + _AAD.pack(index, final)


def chunk_count(size: int) -> int:
    """How many chunks a file of `size` plaintext bytes has (at least one)."""
    return max(1, -(-size // CHUNK))


def sealed_size(size: int) -> int:
    """The stored size of a file of `size` plaintext bytes."""
    return len(MAGIC) + size + TAG * chunk_count(size)


class SealingWriter:
    """Encrypts what it is written, chunk by chunk, into `out`; `close()` seals the last."""

    def __init__(self, out: BinaryIO, key: bytes, file_id: uuid.UUID) -> None:
        self._out = out
        self._cipher = AESGCM(key)
        self._file_id = file_id
        self._buffer = bytearray()
        self._index = 0
        self.size = 0
        out.write(MAGIC)

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        # Keep at least one byte back: the last chunk must be sealed as the final one.
        while len(self._buffer) > CHUNK:
            self._seal(bytes(self._buffer[:CHUNK]), final=False)
            del self._buffer[:CHUNK]

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        aad = _aad(self._file_id, self._index, final)
        self._out.write(self._cipher.encrypt(_nonce(self._index), chunk, aad))
        self._index += 1

    def close(self) -> None:
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()


class Reader(Protocol):
    """Stored bytes from an offset: a file, or an S3 object's body."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def open_range(
    source: Reader, key: bytes, file_id: uuid.UUID, size: int, start: int, end: int
) -> Iterator[bytes]:
    """Plaintext bytes `start..end` (inclusive) of a file of `size` bytes.

    `source` must be positioned at the sealed chunk holding `start`
    (`sealed_offset(start)`); it is closed when the iteration ends.
    """
    cipher = AESGCM(key)
    last = chunk_count(size) - 1
    first_index = start // CHUNK
    try:
        for index in range(first_index, end // CHUNK + 1):
            plain_length = CHUNK if index < last else size - CHUNK * last
            sealed = source.read(plain_length + TAG)
            if len(sealed) != plain_length + TAG:
                raise MediaIntegrityError("the stored file is truncated")
            try:
                chunk = cipher.decrypt(_nonce(index), sealed, _aad(file_id, index, index == last))
            except InvalidTag:
                raise MediaIntegrityError("the stored file was altered") from None
            low = start - index * CHUNK if index == first_index else 0
            high = end - index * CHUNK + 1 if index == end // CHUNK else len(chunk)
            yield chunk[low:high]
    finally:
        source.close()


def sealed_offset(start: int) -> int:
    """Where the sealed chunk holding plaintext byte `start` begins."""
    return len(MAGIC) + (start // CHUNK) * SEALED_CHUNK


def check_magic(source: Reader) -> None:
    """Read and check the header of a stored file (a whole-file read starts with it)."""
    if source.read(len(MAGIC)) != MAGIC:
        raise MediaIntegrityError("not a media file")
