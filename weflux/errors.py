"""Coded errors: what clients see in `error.code` (HTTP) and `extensions.code` (GraphQL)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from starlette.responses import JSONResponse


class ErrorCode(StrEnum):
    """Every code a client may see, over HTTP or in GraphQL (docs/api/README.md#error-codes)."""

    BAD_REQUEST = "BAD_REQUEST"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    CONFLICT = "CONFLICT"
    CONTACT_OPTED_OUT = "CONTACT_OPTED_OUT"
    FORBIDDEN = "FORBIDDEN"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_MFA_CODE = "INVALID_MFA_CODE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    MFA_REQUIRED = "MFA_REQUIRED"
    NOT_FOUND = "NOT_FOUND"
    OUTSIDE_SERVICE_WINDOW = "OUTSIDE_SERVICE_WINDOW"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    RATE_LIMITED = "RATE_LIMITED"
    REAUTHENTICATION_REQUIRED = "REAUTHENTICATION_REQUIRED"
    SMTP_ERROR = "SMTP_ERROR"
    TIMEOUT = "TIMEOUT"
    TOKEN_REUSED = "TOKEN_REUSED"  # noqa: S105 (a code, not a secret)
    TWO_FACTOR_REQUIRED = "TWO_FACTOR_REQUIRED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    VALIDATION_FAILED = "VALIDATION_FAILED"


def error_response(
    status: int,
    code: ErrorCode,
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

    code: ErrorCode = ErrorCode.BAD_REQUEST
    graphql_code: ErrorCode = ErrorCode.BAD_USER_INPUT
    status = 400

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadUserInput(WefluxError):
    code = ErrorCode.VALIDATION_FAILED
    graphql_code = ErrorCode.BAD_USER_INPUT
    status = 422


class Unauthenticated(WefluxError):
    code = ErrorCode.UNAUTHENTICATED
    graphql_code = ErrorCode.UNAUTHENTICATED
    status = 401


class InvalidCredentials(Unauthenticated):
    code = ErrorCode.INVALID_CREDENTIALS


class TokenReused(Unauthenticated):
    code = ErrorCode.TOKEN_REUSED


class MfaRequired(Unauthenticated):
    """The password was right; the second factor is asked for with this `mfa_token`."""

    code = ErrorCode.MFA_REQUIRED

    def __init__(self, message: str, *, mfa_token: str | None) -> None:
        super().__init__(message)
        # None where the code is sent again with the same request (POST /auth/switch).
        self.mfa_token = mfa_token


class InvalidMfaCode(Unauthenticated):
    code = ErrorCode.INVALID_MFA_CODE
    graphql_code = ErrorCode.INVALID_MFA_CODE


class Forbidden(WefluxError):
    code = ErrorCode.FORBIDDEN
    graphql_code = ErrorCode.FORBIDDEN
    status = 403


class TwoFactorRequired(Forbidden):
    """The workspace requires two factors and the caller has not enrolled yet."""

    code = ErrorCode.TWO_FACTOR_REQUIRED
    graphql_code = ErrorCode.TWO_FACTOR_REQUIRED


class ReauthenticationRequired(Forbidden):
    """A sensitive operation, and the session's last authentication is too old."""

    code = ErrorCode.REAUTHENTICATION_REQUIRED
    graphql_code = ErrorCode.REAUTHENTICATION_REQUIRED


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


class Unavailable(WefluxError):
    """A dependency of ours (a file store) failed or could not be reached: nothing was
    changed, and the same request may succeed after `retry_after` seconds (HTTP 503)."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE
    graphql_code = ErrorCode.UPSTREAM_UNAVAILABLE
    status = 503

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutsideServiceWindow(WefluxError):
    """More than 24 hours since the contact last wrote: only a template may be sent."""

    code = ErrorCode.OUTSIDE_SERVICE_WINDOW
    graphql_code = ErrorCode.OUTSIDE_SERVICE_WINDOW
    status = 409


class ContactOptedOut(WefluxError):
    """The contact asked not to be messaged (STOP); they can opt in again (START)."""

    code = ErrorCode.CONTACT_OPTED_OUT
    graphql_code = ErrorCode.CONTACT_OPTED_OUT
    status = 409


class PayloadTooLarge(WefluxError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    graphql_code = ErrorCode.BAD_USER_INPUT
    status = 413


class UnsupportedMediaType(WefluxError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    graphql_code = ErrorCode.BAD_USER_INPUT
    status = 415


def wefluxerror_response(error: WefluxError) -> JSONResponse:
    """The HTTP answer for a coded error outside GraphQL."""
    headers = {"Cache-Control": "no-store"}
    if isinstance(error, RateLimited | Unavailable):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    response = error_response(
        error.status, error.code, error.message, details=error.details, headers=headers
    )
    if isinstance(error, MfaRequired) and error.mfa_token is not None:
        body: dict[str, Any] = {
            "error": {"code": error.code, "message": error.message},
            "mfaToken": error.mfa_token,
        }
        response = JSONResponse(body, status_code=error.status, headers=headers)
    return response
