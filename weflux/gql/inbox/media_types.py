"""The GraphQL type of a media file (CONTRACT §11): what it is, and where to fetch it."""

from __future__ import annotations

import strawberry

from weflux import models
from weflux.ids import encode_global_id
from weflux.models import MediaStatus


@strawberry.type(
    description="A photo, video, voice note, document or sticker of a message, or an upload "
    "waiting to be sent (uploadMedia, then sendMedia). Stored encrypted; fetched from "
    "`downloadPath` with the caller's Bearer token."
)
class Media:
    id: strawberry.ID = strawberry.field(
        description="The file's global id: `mediaId` of sendMedia, and the last segment of "
        "`downloadPath`."
    )
    mime_type: str = strawberry.field(
        description="Its content type (`image/jpeg`, `audio/ogg`, …), as WhatsApp announced it "
        "or as its content showed (uploads)."
    )
    sha256: str | None = strawberry.field(
        description="Its SHA-256 as the webhook announced it (hex or base64, as Meta sent it); "
        "the downloaded file was checked against it. Hex for uploads."
    )
    caption: str | None = strawberry.field(
        description="The caption its message was sent with, if any (the message's `text` "
        "holds it too): one file sent several times shows each message's own; null on "
        "uploadMedia's answer."
    )
    filename: str | None = strawberry.field(
        description="The document's file name as the sender gave it; null for other kinds."
    )
    size: int | None = strawberry.field(
        description="Its size in bytes once stored; null until then."
    )
    download_path: str | None = strawberry.field(
        description="`/media/{id}` once the file is stored and can be fetched (with the "
        "Bearer token); null while it is being downloaded from WhatsApp, and for good when "
        "the download failed (`failure` says why)."
    )
    failure: str | None = strawberry.field(
        description="Why the file could not be stored (over WhatsApp's size limit for its "
        "kind, a checksum that does not match, refused by WhatsApp, or given up after "
        "repeated failures); null otherwise. Final: such a file never becomes downloadable."
    )


def to_media(row: models.MediaFile) -> Media:
    media_id = encode_global_id("Media", row.id)
    return Media(
        id=strawberry.ID(media_id),
        mime_type=row.mime_type,
        sha256=row.sha256,
        caption=row.caption,
        filename=row.filename,
        size=row.size if row.status == MediaStatus.READY else None,
        download_path=f"/media/{media_id}" if row.status == MediaStatus.READY else None,
        failure=row.failure if row.status == MediaStatus.FAILED else None,
    )
