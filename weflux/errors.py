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
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    TIMEOUT = "TIMEOUT"
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


class WefluxError(Exception):
    """An expected failure with a code clients can act on; its message is safe to show."""

    code = ErrorCode.BAD_REQUEST
    graphql_code = "BAD_USER_INPUT"
    status = 400

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadUserInput(WefluxError):
    code = ErrorCode.VALIDATION_FAILED
    graphql_code = "BAD_USER_INPUT"
    status = 422


class Unauthenticated(WefluxError):
    code = ErrorCode.UNAUTHENTICATED
    graphql_code = ErrorCode.UNAUTHENTICATED
    status = 401


class InvalidCredentials(Unauthenticated):
    code = "INVALID_CREDENTIALS"


class TokenReused(Unauthenticated):
    code = "TOKEN_REUSED"


class Forbidden(WefluxError):
    code = ErrorCode.FORBIDDEN
    graphql_code = ErrorCode.FORBIDDEN
    status = 403


class NotFound(WefluxError):
    code = ErrorCode.NOT_FOUND
    graphql_code = ErrorCode.NOT_FOUND
    status = 404


class Conflict(WefluxError):
    code = ErrorCode.CONFLICT
    graphql_code = ErrorCode.CONFLICT
    status = 409


class RateLimited(WefluxError):
    code = ErrorCode.RATE_LIMITED
    graphql_code = ErrorCode.RATE_LIMITED
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutsideServiceWindow(WefluxError):
    """More than 24 hours since the contact last wrote: only a template may be sent."""

    code = "OUTSIDE_SERVICE_WINDOW"
    graphql_code = "OUTSIDE_SERVICE_WINDOW"
    status = 409


class ContactOptedOut(WefluxError):
    """The contact asked not to be messaged (STOP); they can opt in again (START)."""

    code = "CONTACT_OPTED_OUT"
    graphql_code = "CONTACT_OPTED_OUT"
    status = 409


class PayloadTooLarge(WefluxError):
    code = "PAYLOAD_TOO_LARGE"
    graphql_code = "BAD_USER_INPUT"
    status = 413


class UnsupportedMediaType(WefluxError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    graphql_code = "BAD_USER_INPUT"
    status = 415


def wefluxerror_response(error: WefluxError) -> JSONResponse:
    """The HTTP answer for a coded error outside GraphQL."""
    headers = {"Cache-Control": "no-store"}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        error.status, error.code, error.message, details=error.details, headers=headers
    )
