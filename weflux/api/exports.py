"""/exports/{id}: an export's file, decrypted as it streams, for Admins of its workspace.

Anyone else, and any export not ready or past its `expiresAt`, gets 404: the answer
never says whether an export exists in another workspace.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from weflux.api.bearer import member
from weflux.api.streams import started
from weflux.auth.permissions import Permission
from weflux.client_ip import request_meta
from weflux.errors import NotFound, Unavailable, WefluxError, wefluxerror_response
from weflux.ids import decode_global_id
from weflux.lifecycle import exports
from weflux.models import DataRequest as DataRequestRow
from weflux.models import DataRequestKind, DataRequestStatus, utcnow
from weflux.runtime import runtime_of
from weflux.services.audit import Action, record

log = logging.getLogger(__name__)

EXPORT_KINDS = (DataRequestKind.CONTACT_EXPORT, DataRequestKind.WORKSPACE_EXPORT)


async def download(request: Request) -> Response:
    try:
        return await _download(request)
    except WefluxError as error:
        return wefluxerror_response(error)


async def _download(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await member(request)
    missing = NotFound("Export not found")
    if not principal.can(Permission.READ_AUDIT):
        raise missing
    try:
        request_id: uuid.UUID = decode_global_id(request.path_params["id"], "DataRequest")
    except WefluxError:
        raise missing from None
    directory = runtime.settings.export_directory
    async with runtime.db.session(principal.org_id) as session:
        row = await session.get(DataRequestRow, request_id)
        if (
            row is None
            or row.kind not in EXPORT_KINDS
            or row.status != DataRequestStatus.COMPLETED
            or row.file_name is None
            or exports.expired(row, utcnow())
        ):
            raise missing
        path = directory / row.file_name
        if not await asyncio.to_thread(path.is_file):
            raise missing
        key = exports.data_key(runtime.keyring, row)
        await record(
            session,
            Action.EXPORT_DOWNLOADED,
            actor=principal,
            target_type="DataRequest",
            target_id=row.id,
            meta=request_meta(request, runtime.trusted_proxies),
        )
    chunks = await started(_read(exports.open_sealed(path, key, request_id)))
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="weflux-export-{request_id}.zip"',
            "Cache-Control": "no-store",
        },
    )


def _read(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks; a file the disk fails to give (unreadable, gone, an I/O error) is
    UPSTREAM_UNAVAILABLE: 503 before the first chunk, else the response ends early."""
    try:
        yield from chunks
    except OSError as error:
        log.warning(
            "the export store is unavailable",
            extra={"store": "exports", "error": type(error).__name__},
        )
        raise Unavailable("The export file cannot be read now; try again shortly") from None


routes = [Route("/exports/{id}", download, methods=["GET"])]
