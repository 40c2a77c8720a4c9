"""One password check for the whole app, throttled so it cannot be brute-forced.

Every place that checks a password (login, `changePassword` over HTTP and WebSocket,
accepting an invitation with an existing account) calls `PasswordGuard.check`; a test
forbids `verify_password` anywhere else. Second factors (a TOTP or recovery code at
`POST /auth/mfa` and `/auth/reauthenticate`, and the codes of the two-factor
mutations) go through `PasswordGuard.check_code`, under the same limits; wrong codes
are counted apart from wrong passwords per account and IP (and together per account),
so that a right password, which clears its own count, never resets the count of wrong
codes. Modelled on Auth0's brute-force protection:

1. Failed checks are counted per account *and* IP (`WEFLUX_RATE_LIMIT_LOGIN_ACCOUNT_IP`,
   10 an hour, Auth0's `count_per_identifier_and_ip`). An attempt is counted before
   bcrypt runs (so concurrent guesses cannot slip past the count) and a success clears
   the count: successes never count, and the next failures start from zero.
2. Failed checks are also counted per account across all IPs
   (`WEFLUX_RATE_LIMIT_LOGIN_ACCOUNT`, 100 an hour), after bcrypt. Once that cap is
   crossed the account is under a distributed attack, and an IP that has failed for it
   in its window is refused, unless the account logged in from that IP before (a known
   IP, remembered 30 days). An IP without failures still gets its check, so the owner on
   a fresh network gets in with the right password; a single IP or a few never reach
   the cap (10 each).
3. Throttled attempts answer 429 `RATE_LIMITED` with `Retry-After` and never run bcrypt.
   An unknown email is counted and checked (against a dummy hash) exactly like a known
   one, so neither the answer nor its timing tells whether an account exists.

The residual trade-off: past the cap, every new IP still gets one guess per window.
A botnet of N addresses gets about N guesses an hour on one account, which the
password policy (zxcvbn score 3: more than 10^8 guesses) makes hopeless, while no
attack can lock the owner out of a network they have not mistyped their password on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from weflux.auth.passwords import verify_password
from weflux.emails import normalize_email
from weflux.errors import RateLimited
from weflux.throttle.ratelimit import RateLimiter, per_ip

KNOWN_IP_SECONDS = 30 * 86400
ACCOUNT_IP = "login_account_ip"
ACCOUNT = "login_account"
KNOWN_IP = "login_known_ip"
THROTTLED_MESSAGE = "Too many attempts; try again later"


def _pair(account: str, ip: str | None) -> str:
    return f"{account}\n{per_ip(ip)}"


class PasswordGuard:
    """Checks passwords through the per-account limiter and the bounded bcrypt pool."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def check(
        self, *, email: str, ip: str | None, password: str, password_hash: str | None
    ) -> bool:
        """Whether `password` matches `password_hash` (None: no such account).

        Raises `RateLimited` (before any bcrypt) when this account may not be tried
        from this IP now, and `PasswordHashingBusy` when the bcrypt pool is full.
        """
        account = normalize_email(email)
        return await self._guarded(
            account, _pair(account, ip), lambda: verify_password(password, password_hash)
        )

    async def check_code(
        self, *, email: str, ip: str | None, verify: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Run `verify` (a second-factor check) under this account's limits."""
        account = normalize_email(email)
        return await self._guarded(account, "code\n" + _pair(account, ip), verify)

    async def _guarded(
        self, account: str, pair: str, verify: Callable[[], Awaitable[bool]]
    ) -> bool:
        await self._admit(account, pair)
        valid = await verify()
        if valid:
            await self._limiter.clear(ACCOUNT_IP, pair)
            await self._limiter.remember(KNOWN_IP, pair, seconds=KNOWN_IP_SECONDS)
        else:
            await self._limiter.hit(ACCOUNT, account)
        return valid

    async def _admit(self, account: str, pair: str) -> None:
        cap = await self._limiter.test(ACCOUNT, account)
        if (
            not cap.allowed
            and await self._limiter.used(ACCOUNT_IP, pair) > 0
            and not await self._limiter.remembers(KNOWN_IP, pair)
        ):
            raise RateLimited(THROTTLED_MESSAGE, retry_after=cap.retry_after)
        attempt = await self._limiter.hit(ACCOUNT_IP, pair)
        if not attempt.allowed:
            raise RateLimited(THROTTLED_MESSAGE, retry_after=attempt.retry_after)
