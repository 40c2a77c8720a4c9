"""Coded errors: what clients see in `error.code` (HTTP) and `extensions.code` (GraphQL)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ErrorCode:
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """`{"error": {"code", "message"[, "details"]}}` for routes outside GraphQL."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def graphql_unauthenticated() -> JSONResponse:
    """The answer of `/graphql` to a request without a valid access token."""
    return JSONResponse(
        {
            "errors": [
                {
                    "message": "Authentication required",
                    "extensions": {"code": ErrorCode.UNAUTHENTICATED},
                }
            ]
        },
        status_code=401,
        headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
    )
