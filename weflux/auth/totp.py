"""TOTP (RFC 6238: SHA-1, 30 s, 6 digits) and recovery codes: the arithmetic, no storage.

A code is accepted within one step either side of now, and only for a step later than
the last one accepted (`weflux.services.two_factor` stores it), so a code cannot be
replayed. Recovery codes are 10 random codes of 50 bits each; what is stored of them is
a keyed hash under the key ring (`weflux.auth.recovery_codes`).
"""

from __future__ import annotations

import hmac
import io
import secrets
from datetime import datetime

import pyotp
import segno

ISSUER = "Weflux"
STEP_SECONDS = 30
DIGITS = 6
WINDOW = 1  # steps either side of now
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l, o, 0, 1


def new_secret() -> str:
    """A new base32 TOTP secret (160 bits, as RFC 4226 recommends)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str) -> str:
    """The `otpauth://totp/...` URI authenticator apps read."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=ISSUER
    )


def qr_code_svg(uri: str) -> str:
    """The URI as an SVG QR code, made here (nothing leaves the server)."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", xmldecl=False, scale=4, border=2)
    return out.getvalue().decode("utf-8")


def step_of(moment: datetime) -> int:
    return int(moment.timestamp()) // STEP_SECONDS


def matching_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step `code` belongs to (within ±WINDOW of now), if later than `last_step`."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = step_of(now)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes() -> list[str]:
    """Ten codes like `k7dq2-mx9ft`, each 50 random bits."""
    return [
        "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(5)) for _ in range(2))
        for _ in range(RECOVERY_CODE_COUNT)
    ]
