"""JWT access and refresh tokens (PyJWT, HS256 pinned).

Both kinds carry `iss`, `aud`, `sub` (user), `org` (workspace), `sid` (session), `jti`,
`iat`, `nbf`, `exp` and `typ`. The two kinds differ in `typ` *and* in `aud`, and are
checked for both, so a refresh token is never accepted as an access token, nor the
reverse. Tokens are only a pointer at a session: every use checks that the session is
live (see `weflux.auth.authenticator`).

HS256 is deterministic: the same claims under the same secret give the same token, byte
for byte. So a token's `TokenStamp` (`jti`, `iat`, `exp`), which is no secret, is enough
to issue that very token again (the refresh reuse interval relies on it).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt

from weflux.models import utcnow

ALGORITHM = "HS256"
ISSUER = "weflux"
LEEWAY_SECONDS = 5

TokenType = Literal["access", "refresh", "mfa"]
_AUDIENCE: dict[TokenType, str] = {
    "access": "weflux:api",
    "refresh": "weflux:refresh",
    # The second step of a login (docs/security/two-factor.md): `sid` is the challenge.
    "mfa": "weflux:mfa",
}
MFA_TOKEN_TTL = timedelta(minutes=5)


class InvalidTokenError(Exception):
    """The token is missing, malformed, forged, expired, or of the wrong kind."""


@dataclass(frozen=True)
class TokenClaims:
    """The verified content of a token."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    session_id: uuid.UUID
    jti: str
    issued_at: datetime
    expires_at: datetime
    type: TokenType


@dataclass(frozen=True)
class TokenStamp:
    """What sets one token apart from another of the same session; no secret."""

    jti: str
    issued_at: int
    expires_at: int

    def as_json(self) -> dict[str, str | int]:
        return {"jti": self.jti, "iat": self.issued_at, "exp": self.expires_at}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TokenStamp:
        return cls(jti=str(value["jti"]), issued_at=int(value["iat"]), expires_at=int(value["exp"]))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime
    stamp: TokenStamp


class TokenCodec:
    """Signs and verifies tokens with the configured secret and lifetimes."""

    def __init__(
        self,
        secret: str,
        *,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
        session_max_age: timedelta = timedelta(days=90),
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.session_max_age = session_max_age

    def __repr__(self) -> str:
        return "TokenCodec(secret=<hidden>)"

    def issue(
        self,
        kind: TokenType,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        session_id: uuid.UUID,
        not_after: datetime | None = None,
    ) -> IssuedToken:
        """A new token of `kind`, expiring after its lifetime or at `not_after`, if sooner."""
        now = utcnow()
        lifetime = {"access": self.access_ttl, "refresh": self.refresh_ttl, "mfa": MFA_TOKEN_TTL}
        expires_at = now + lifetime[kind]
        if not_after is not None:
            expires_at = min(expires_at, not_after)
        stamp = TokenStamp(
            jti=secrets.token_urlsafe(16),
            issued_at=int(now.timestamp()),
            expires_at=int(expires_at.timestamp()),
        )
        return self.reissue(kind, stamp, user_id=user_id, org_id=org_id, session_id=session_id)

    def reissue(
        self,
        kind: TokenType,
        stamp: TokenStamp,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        session_id: uuid.UUID,
    ) -> IssuedToken:
        """The token of `kind` with exactly this stamp: the same bytes every time."""
        payload = {
            "iss": ISSUER,
            "aud": _AUDIENCE[kind],
            "sub": str(user_id),
            "org": str(org_id),
            "sid": str(session_id),
            "jti": stamp.jti,
            "iat": stamp.issued_at,
            "nbf": stamp.issued_at,
            "exp": stamp.expires_at,
            "typ": kind,
        }
        token = jwt.encode(payload, self._secret, algorithm=ALGORITHM, headers={"typ": "JWT"})
        expires_at = datetime.fromtimestamp(stamp.expires_at, tz=UTC)
        return IssuedToken(token=token, expires_at=expires_at, stamp=stamp)

    def verify(self, token: str, kind: TokenType) -> TokenClaims:
        """The claims of a valid token of `kind`; InvalidTokenError otherwise."""
        if not token or len(token) > 4096:
            raise InvalidTokenError("malformed token")
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=_AUDIENCE[kind],
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={
                    "require": [
                        "iss",
                        "aud",
                        "sub",
                        "org",
                        "sid",
                        "jti",
                        "iat",
                        "nbf",
                        "exp",
                        "typ",
                    ]
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(type(exc).__name__) from None
        if payload.get("typ") != kind:
            raise InvalidTokenError("wrong token type")
        try:
            return TokenClaims(
                user_id=uuid.UUID(payload["sub"]),
                org_id=uuid.UUID(payload["org"]),
                session_id=uuid.UUID(payload["sid"]),
                jti=str(payload["jti"]),
                issued_at=datetime.fromtimestamp(int(payload["iat"]), tz=utcnow().tzinfo),
                expires_at=datetime.fromtimestamp(int(payload["exp"]), tz=utcnow().tzinfo),
                type=kind,
            )
        except (TypeError, ValueError):
            raise InvalidTokenError("malformed claims") from None


def token_hash(token: str) -> str:
    """What is stored of a refresh or invitation token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
