"""The encrypted media format: ranges decrypt exactly, and any tampering is caught."""

from __future__ import annotations

import io
import os
import uuid

import pytest

from weflux.media.sealed import (
    CHUNK,
    MediaIntegrityError,
    SealingWriter,
    new_data_key,
    open_range,
    sealed_offset,
    sealed_size,
)


def _seal(content: bytes, key: bytes, file_id: uuid.UUID) -> bytes:
    out = io.BytesIO()
    writer = SealingWriter(out, key, file_id)
    for start in range(0, len(content), 10_000):
        writer.write(content[start : start + 10_000])
    writer.close()
    return out.getvalue()


def _read(sealed: bytes, key: bytes, file_id: uuid.UUID, size: int, start: int, end: int) -> bytes:
    source = io.BytesIO(sealed)
    source.seek(sealed_offset(start))
    return b"".join(open_range(source, key, file_id, size, start, end))


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_every_range_reads_back_exactly(size: int) -> None:
    """Given files around the chunk size,
    when they are sealed and ranges read back,
    then each range is exactly those bytes and the stored size is as computed."""
    content, key, file_id = os.urandom(size), new_data_key(), uuid.uuid4()
    sealed = _seal(content, key, file_id)
    assert len(sealed) == sealed_size(size)
    for start, end in [(0, size - 1), (0, 0), (size - 1, size - 1), (size // 2, size - 1)]:
        assert _read(sealed, key, file_id, size, start, end) == content[start : end + 1]


def test_tampering_truncation_and_another_file_are_refused() -> None:
    """Given a sealed file,
    when a byte is flipped, the last chunk dropped, or it is opened as another file,
    then reading fails with MediaIntegrityError, never with wrong plaintext."""
    size = 2 * CHUNK + 100
    content, key, file_id = os.urandom(size), new_data_key(), uuid.uuid4()
    sealed = _seal(content, key, file_id)
    flipped = bytearray(sealed)
    flipped[sealed_offset(CHUNK) + 5] ^= 1
    cases = [
        (bytes(flipped), file_id, size),
        (sealed[: sealed_offset(2 * CHUNK)], file_id, size),
        (sealed, uuid.uuid4(), size),
        (sealed, file_id, 2 * CHUNK),  # claims the second chunk is the last
    ]
    for data, opened_as, claimed_size in cases:
        with pytest.raises(MediaIntegrityError):
            _read(data, key, opened_as, claimed_size, 0, claimed_size - 1)
