"""What an uploaded file is, by its first bytes: only the kinds WhatsApp sends.

The name and the declared content type are never trusted: a file is what its magic bytes
say (documents of Office's container formats also need the matching extension, as
their container alone does not say which application made them). Anything else is
refused. WhatsApp's list: https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#supported-media-types
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_BYTES = 64  # enough to recognise every kind below


@dataclass(frozen=True)
class Detected:
    kind: str  # image, video, audio, document, sticker
    mime_type: str


_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = b"PK\x03\x04"
_OFFICE_BY_EXTENSION = {
    ".doc": (_OLE2, "application/msword"),
    ".xls": (_OLE2, "application/vnd.ms-excel"),
    ".ppt": (_OLE2, "application/vnd.ms-powerpoint"),
    ".docx": (
        _ZIP,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ".xlsx": (_ZIP, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ".pptx": (
        _ZIP,
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
}


def _extension(filename: str | None) -> str:
    name = (filename or "").lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _mp4_family(head: bytes) -> Detected | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in (b"M4A ", b"M4B "):
        return Detected("audio", "audio/mp4")
    if brand.startswith(b"3gp") or brand.startswith(b"3g2"):
        return Detected("video", "video/3gpp")
    return Detected("video", "video/mp4")


def _plain_text(head: bytes, filename: str | None) -> Detected | None:
    if _extension(filename) != ".txt" or b"\x00" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not merely a character cut at the end
            return None
    return Detected("document", "text/plain")


def detect(head: bytes, filename: str | None) -> Detected | None:
    """The kind and content type of a file starting with `head`; None when WhatsApp
    cannot send it (or it is not what it claims)."""
    if head.startswith(b"\xff\xd8\xff"):
        return Detected("image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Detected("image", "image/png")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Detected("sticker", "image/webp")
    found = _mp4_family(head)
    if found is not None:
        return found
    if head.startswith(b"OggS"):
        return Detected("audio", "audio/ogg")
    if head.startswith(b"#!AMR\n"):
        return Detected("audio", "audio/amr")
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return Detected("audio", "audio/mpeg")
    if head[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return Detected("audio", "audio/aac")
    if head.startswith(b"%PDF-"):
        return Detected("document", "application/pdf")
    office = _OFFICE_BY_EXTENSION.get(_extension(filename))
    if office is not None and head.startswith(office[0]):
        return Detected("document", office[1])
    return _plain_text(head, filename)
