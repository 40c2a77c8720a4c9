"""The backup file: a flipped byte, a cut, swapped chunks, another or unknown key are refused,
by `verify` and by `restore`, which then writes nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.backups import BACKUP_KEYS, backup_settings, populate, table_names
from tests.fixtures.databases import DatabaseUrls
from weflux.config import generate_encryption_key_entry
from weflux.lifecycle import backup_file
from weflux.lifecycle.backup_file import MAGIC, BackupError
from weflux.lifecycle.backups import create_backup, restore_backup, verify_backup

_LENGTH = 4


def _split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(magic, header and digest), [each chunk with its length prefix]."""
    header_length = int.from_bytes(data[len(MAGIC) : len(MAGIC) + _LENGTH], "big")
    at = len(MAGIC) + _LENGTH + header_length + backup_file.DIGEST_BYTES
    prefix, chunks = data[:at], []
    while at < len(data):
        size = int.from_bytes(data[at : at + _LENGTH], "big")
        chunks.append(data[at : at + _LENGTH + size])
        at += _LENGTH + size
    return prefix, chunks


def _flip_data_byte(data: bytes) -> bytes:
    prefix, chunks = _split(data)
    middle = bytearray(chunks[1])
    middle[len(middle) // 2] ^= 0x01
    return prefix + chunks[0] + bytes(middle) + b"".join(chunks[2:])


def _flip_header_byte(data: bytes) -> bytes:
    # The header's revision text: `0007_...` becomes `1007_...`, still valid JSON.
    at = data.index(b'"revision": "') + len(b'"revision": "')
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _cut_before_the_last_chunk(data: bytes) -> bytes:
    prefix, chunks = _split(data)
    return prefix + b"".join(chunks[:-1])


def _cut_inside_a_chunk(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _swap_two_chunks(data: bytes) -> bytes:
    prefix, chunks = _split(data)
    chunks[0], chunks[1] = chunks[1], chunks[0]
    return prefix + b"".join(chunks)


def _drop_a_chunk(data: bytes) -> bytes:
    prefix, chunks = _split(data)
    return prefix + b"".join(chunks[:1] + chunks[2:])


def _edit_the_digest_slot(data: bytes) -> bytes:
    prefix, chunks = _split(data)
    return prefix[:-1] + bytes([prefix[-1] ^ 0x01]) + b"".join(chunks)


TAMPERINGS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "flipped data byte": (_flip_data_byte, "chunk 1 does not authenticate"),
    "flipped header byte": (_flip_header_byte, "chunk 0 does not authenticate"),
    "cut before the last chunk": (_cut_before_the_last_chunk, "without its final chunk"),
    "cut inside a chunk": (_cut_inside_a_chunk, "cut short"),
    "swapped chunks": (_swap_two_chunks, "chunk 0 does not authenticate"),
    "dropped chunk": (_drop_a_chunk, "chunk 1 does not authenticate"),
    "edited digest": (_edit_the_digest_slot, "digest does not match"),
}


def _rewrite(path: Path, alter: Callable[[bytes], bytes]) -> None:
    path.write_bytes(alter(path.read_bytes()))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 512 bytes, so that a small database makes many."""
    monkeypatch.setattr(backup_file, "CHUNK_BYTES", 512)


@pytest.fixture
async def backup(database_urls: DatabaseUrls, tmp_path: Path, small_chunks: None) -> Path:
    settings = backup_settings(tmp_path, database_urls)
    await populate(settings)
    summary = await create_backup(settings)
    assert len(_split(summary.path.read_bytes())[1]) > 5
    return summary.path


@pytest.mark.parametrize("tampering", TAMPERINGS)
async def test_a_tampered_file_is_refused_and_restore_writes_nothing(
    backup: Path, empty_database_urls: DatabaseUrls, tmp_path: Path, tampering: str
) -> None:
    """Given a backup altered on disk, when it is verified or restored, then each is
    refused with a clear error and the target database stays without a table."""
    alter, reason = TAMPERINGS[tampering]
    _rewrite(backup, alter)
    target = backup_settings(tmp_path, empty_database_urls)

    with pytest.raises(BackupError, match=reason):
        verify_backup(backup, target.backup_key_ring)
    with pytest.raises(BackupError, match=reason):
        await restore_backup(target, backup)

    assert await table_names(empty_database_urls.owner) == []


async def test_a_key_of_another_id_is_refused_naming_the_missing_key(
    backup: Path, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    target = backup_settings(
        tmp_path, empty_database_urls, keys=generate_encryption_key_entry("other")
    )

    with pytest.raises(
        BackupError, match="sealed with key `bk1`, which WEFLUX_BACKUP_KEYS does not hold"
    ):
        await restore_backup(target, backup)

    assert await table_names(empty_database_urls.owner) == []


async def test_another_key_under_the_same_id_is_refused(
    backup: Path, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    impostor = generate_encryption_key_entry("bk1")
    assert impostor != BACKUP_KEYS
    target = backup_settings(tmp_path, empty_database_urls, keys=impostor)

    with pytest.raises(BackupError, match="chunk 0 does not authenticate"):
        await restore_backup(target, backup)

    assert await table_names(empty_database_urls.owner) == []


async def test_an_older_key_still_opens_a_backup_after_a_new_one_comes_first(
    backup: Path, tmp_path: Path
) -> None:
    ring = [("bk2", base64.b64decode(generate_encryption_key_entry("bk2").split(":")[1]))]
    old = [(kid, base64.b64decode(key)) for kid, key in [BACKUP_KEYS.split(":")]]

    assert verify_backup(backup, ring + old).kid == "bk1"


def test_a_file_that_is_not_a_backup_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.wfxbak"
    path.write_bytes(b"PK\x03\x04 a zip file")

    with pytest.raises(BackupError, match="not a Weflux backup"):
        verify_backup(path, [("bk1", bytes(32))])
