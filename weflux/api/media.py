"""/media/{id}: a media file, decrypted as it streams, for members who may see its message.

Bearer authentication as on /graphql; no cookie and no token in the URL (it would end
up in logs, history and Referer headers), so a browser app fetches the file with its
Authorization header and shows it from a `blob:` URL (docs/inbox.md#media). Whoever may
not see the message (another workspace, an Agent's invisible conversation, an erased
contact), and any file not stored (yet), gets 404, like one that does not exist.
Single byte ranges are answered 206 (416 when unsatisfiable) so audio and video seek.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
import uuid
from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from weflux.api.bearer import member
from weflux.api.streams import started
from weflux.auth.permissions import Permission
from weflux.auth.scoping import restrict_to_agent
from weflux.errors import NotFound, WefluxError, wefluxerror_response
from weflux.ids import decode_global_id
from weflux.media.files import data_key
from weflux.media.kinds import content_disposition, safe_filename
from weflux.media.sealed import MediaIntegrityError, open_range, sealed_offset
from weflux.media.store import MediaStore, unavailable
from weflux.models import MediaFile, MediaStatus
from weflux.runtime import runtime_of
from weflux.services.media import visible

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII)
# Past any file. A position of more digits stands for it: int() refuses strings of more
# than 4300 digits (a ValueError, so a 500), and no file is that large anyway.
_BEYOND = 10**18


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 18 else _BEYOND


async def serve(request: Request) -> Response:
    try:
        return await _serve(request)
    except WefluxError as error:
        return wefluxerror_response(error)


def byte_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(start, end) of a satisfiable single range; None for the whole file (no header,
    or one this does not answer by range); False when unsatisfiable (416)."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges, or another unit: the whole file (RFC 9110 allows)
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = _position(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if start >= size or (last and _position(last) < start):
        return False
    return start, end


def _filename(row: MediaFile) -> str:
    extension = mimetypes.guess_extension(row.mime_type) or ""
    return safe_filename(row.filename, f"{row.kind}-{str(row.id)[:8]}{extension}")


async def _serve(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await member(request)
    missing = NotFound("Media not found")
    try:
        media_id: uuid.UUID = decode_global_id(request.path_params["id"], "Media")
    except WefluxError:
        raise missing from None
    async with runtime.db.session(principal.org_id) as session:
        if not principal.can(Permission.SEE_ALL_CONVERSATIONS):
            restrict_to_agent(session, principal.membership_id)
        row = await session.get(MediaFile, media_id)
        if (
            row is None
            or row.status != MediaStatus.READY
            or row.storage_key is None
            or row.size is None
            or not await visible(session, principal, row)
        ):
            raise missing
        key = data_key(runtime.keyring, row)
    size = row.size
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": content_disposition(row.mime_type, _filename(row)),
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
        "Accept-Ranges": "bytes",
    }
    wanted = byte_range(request.headers.get("range"), size)
    if wanted is False:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
    status = 206 if isinstance(wanted, tuple) else 200
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    if size == 0:
        return Response(b"", media_type=row.mime_type, headers=headers)
    try:
        source = await asyncio.to_thread(runtime.media.open, row.storage_key, sealed_offset(start))
    except FileNotFoundError:
        log.error("a stored media file is missing", extra={"media_id": str(row.id)})
        raise missing from None
    except Exception as error:
        if (outage := unavailable(runtime.media, error)) is None:
            raise
        raise outage from None
    chunks = await started(
        _checked(open_range(source, key, row.id, size, start, end), row.id, runtime.media)
    )
    return StreamingResponse(chunks, status_code=status, media_type=row.mime_type, headers=headers)


def _checked(chunks: Iterator[bytes], media_id: uuid.UUID, store: MediaStore) -> Iterator[bytes]:
    """The chunks; a file that fails its tag, or a store that fails mid-read, ends the
    response early, logged (before the first chunk: 503, weflux.api.streams)."""
    try:
        yield from chunks
    except MediaIntegrityError as error:
        log.error(
            "a stored media file does not decrypt",
            extra={"media_id": str(media_id), "reason": str(error)},
        )
        raise
    except Exception as error:
        if (outage := unavailable(store, error)) is None:
            raise
        raise outage from None


routes = [Route("/media/{id}", serve, methods=["GET"])]
