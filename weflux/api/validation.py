"""Strict JSON request bodies: content type, size cap, schema, per-field errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from weflux.errors import BadUserInput, PayloadTooLarge, UnsupportedMediaType, WefluxError
from weflux.nul import NUL_MESSAGE, holds_nul

M = TypeVar("M", bound=BaseModel)


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing more than `max_bytes` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes")
        except ValueError:
            raise WefluxError("Invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"The body is larger than {max_bytes} bytes")
    return bytes(body)


async def read_json(request: Request, max_bytes: int) -> Any:
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("Send the body as application/json")
    body = await read_body(request, max_bytes)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested past the stack
        raise WefluxError("The body is not valid JSON") from None


def parse(model: type[M], data: Any) -> M:
    """Validate `data` against `model`, or 422 with one entry per offending field."""
    if isinstance(data, dict):
        nul = [
            {"field": str(key), "message": NUL_MESSAGE}
            for key, value in data.items()
            if holds_nul(value)
        ]
        if nul:
            raise BadUserInput("The request is not valid", details=nul)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"],
            }
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise BadUserInput("The request is not valid", details=details) from None
