"""What each media kind may be: Meta's size limits, checksums, and how a file is served."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import unicodedata
from urllib.parse import quote

# Meta's limits per kind (Cloud API "Supported media types"); a sticker's is for an
# animated one (a static sticker is at most 100 KB).
MAX_BYTES: dict[str, int] = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}
MEDIA_KINDS = tuple(MAX_BYTES)

_MIME = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}/[a-z0-9][a-z0-9.+-]{0,127}$")
# Shown in the page (an <img>, <audio>, <video>); everything else is a download.
_INLINE_PREFIXES = ("image/", "audio/", "video/")
_NEVER_INLINE = {"image/svg+xml"}  # scriptable
_FILENAME_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;]+')


def max_bytes(kind: str) -> int:
    return MAX_BYTES.get(kind, MAX_BYTES["document"])


def normal_mime_type(value: str | None) -> str:
    """A bare, lower-case `type/subtype`, or application/octet-stream."""
    if value:
        bare = value.split(";", 1)[0].strip().lower()
        if len(bare) <= 255 and _MIME.match(bare):  # media_files.mime_type's length
            return bare
    return "application/octet-stream"


def digest_matches(expected: str, actual: bytes) -> bool:
    """Whether a webhook's sha256 (hex, or base64 as Meta sometimes sends it) is `actual`."""
    value = expected.strip()
    wanted: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        wanted = bytes.fromhex(value)
    else:
        try:
            wanted = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            try:
                wanted = base64.b64decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                return False
    return len(wanted) == 32 and hmac.compare_digest(wanted, actual)


def served_inline(mime_type: str) -> bool:
    return mime_type.startswith(_INLINE_PREFIXES) and mime_type not in _NEVER_INLINE


# Characters that hide or reorder what a person reads (a right-to-left override shows
# "invoice\u202efdp.exe" as "invoiceexe.pdf"), and those no encoder takes: controls (C1
# too), format characters (bidi controls, zero-width ones), surrogates, line and
# paragraph separators. Replaced like the ASCII controls.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name without path, control, invisible or quoting characters, at most 120
    characters."""
    normalized = unicodedata.normalize("NFC", name or "")
    shown = "".join(
        "\x00" if unicodedata.category(c) in _INVISIBLE_CATEGORIES else c for c in normalized
    )
    cleaned = _FILENAME_UNSAFE.sub("_", shown).strip(" .")
    return cleaned[:120] or fallback


def content_disposition(mime_type: str, filename: str) -> str:
    """`inline` for pictures, sound and video, `attachment` for anything else; the name
    both as ASCII and RFC 5987 UTF-8."""
    disposition = "inline" if served_inline(mime_type) else "attachment"
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    quoted = quote(filename, safe="")
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"
