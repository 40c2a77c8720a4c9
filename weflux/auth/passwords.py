"""Password hashing with bcrypt, and the password policy for new passwords.

- Hashes are bcrypt (`$2b$`) at cost `BCRYPT_ROUNDS`, made and checked in a dedicated,
  bounded pool (`BcryptPool`: a few threads and a bounded queue, never asyncio's shared
  default executor), so the event loop keeps serving while bcrypt burns CPU, and a flood
  of guesses is refused at once (`PasswordHashingBusy`, a 429) instead of queueing
  without end in front of everybody's logins.
- `verify_password` costs one full bcrypt check whatever happens: an unknown email
  (no stored hash), a malformed stored hash or an over-long password are checked
  against a dummy hash of the same cost, so response time does not tell whether an
  account exists.
- `check_password_policy` refuses passwords that are too short, longer than the
  72 bytes bcrypt uses, made from the email address, guessable according to zxcvbn,
  or containing NUL characters or lone surrogates. Its messages are meant for the end user.

No function here puts the password in an exception message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt
from zxcvbn import zxcvbn

from weflux.config import PASSWORD_HASHING_QUEUE, PASSWORD_HASHING_WORKERS
from weflux.errors import RateLimited

log = logging.getLogger(__name__)

# Read at call time (never captured at import), so tests can lower it for speed.
BCRYPT_ROUNDS = 12

# bcrypt only uses the first 72 bytes of a password.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_CHARACTERS = 12
MIN_ZXCVBN_SCORE = 3
# Parts of an email address shorter than this are too common to be refused inside a password.
_MIN_EMAIL_PART_CHARACTERS = 4

_BCRYPT_HASH = re.compile(r"\$2[abxy]\$(?P<cost>[0-9]{2})\$[./A-Za-z0-9]{53}")

T = TypeVar("T")

# zxcvbn keeps the user inputs of the current call in a module-level dictionary.
_zxcvbn_lock = threading.Lock()

TOO_SHORT_MESSAGE = f"Your password must be at least {MIN_PASSWORD_CHARACTERS} characters long."
TOO_LONG_MESSAGE = (
    f"Your password must be at most {MAX_PASSWORD_BYTES} bytes long "
    f"(accented letters and emoji take 2 to 4 bytes each): passwords are stored with "
    f"bcrypt, which only uses the first {MAX_PASSWORD_BYTES} bytes, so anything beyond "
    f"would be silently ignored."
)
NUL_MESSAGE = "Your password must not contain NUL (zero) characters."
NOT_TEXT_MESSAGE = "Your password contains characters that are not valid text."
EMAIL_MESSAGE = "Your password must not contain your email address or the name before the @."
GUESSABLE_MESSAGE = "This password is too easy to guess."
GUESSABLE_ADVICE = "Try a longer phrase made of several uncommon words."


class PasswordPolicyError(ValueError):
    """A password refused by the policy; the message is a sentence for the end user."""


class PasswordHashingBusy(RateLimited):
    """Every thread and queue slot of the bcrypt pool is taken: try again in a second."""

    def __init__(self) -> None:
        super().__init__("Too many password checks at once; try again shortly", retry_after=1)


class BcryptPool:
    """bcrypt's own threads: `workers` run at once, at most `queue` more wait.

    A call that finds every slot taken is refused at once with `PasswordHashingBusy`.
    A slot is held until the thread has finished (not until the caller stops waiting),
    so cancelled callers cannot let more bcrypt run than the bound.
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("a bcrypt pool needs at least one worker and a queue of 0 or more")
        self.workers = workers
        self.queue = queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt")
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    async def run(self, func: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                raise PasswordHashingBusy()
            self._admitted += 1
        try:
            future = self._executor.submit(func, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Let running and queued calls finish; accept no new ones on this pool."""
        self._executor.shutdown(wait=False)


_pool = BcryptPool(PASSWORD_HASHING_WORKERS, PASSWORD_HASHING_QUEUE)


def configure_pool(workers: int, queue: int) -> BcryptPool:
    """Size the process's bcrypt pool (at start-up, from the settings)."""
    global _pool
    if (_pool.workers, _pool.queue) != (workers, queue):
        previous, _pool = _pool, BcryptPool(workers, queue)
        previous.shutdown()
    return _pool


def pool() -> BcryptPool:
    """The process's bcrypt pool."""
    return _pool


async def hash_password(password: str) -> str:
    """Hash a password with bcrypt at cost `BCRYPT_ROUNDS`, in the bcrypt pool."""
    secret = _encode(password)
    if len(secret) > MAX_PASSWORD_BYTES:
        # bcrypt would truncate (bcrypt 4) or fail (bcrypt 5); never store a partial secret.
        raise PasswordPolicyError(TOO_LONG_MESSAGE)
    rounds = BCRYPT_ROUNDS
    hashed = await _pool.run(_hash, secret, rounds)
    return hashed.decode("ascii")


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Whether the password matches the stored hash; always costs one full bcrypt check."""
    rounds = BCRYPT_ROUNDS
    # Lone surrogates (possible in JSON) become bytes no stored hash was made from.
    secret = password.encode("utf-8", "surrogatepass")
    stored = None if password_hash is None else password_hash.encode("utf-8", "replace")
    return await _pool.run(_verify, secret, stored, rounds)


async def warm_up() -> None:
    """Compute the dummy hash for the current cost off the event loop, at start-up."""
    await _pool.run(_dummy_hash, BCRYPT_ROUNDS)


def needs_rehash(password_hash: str) -> bool:
    """Whether the stored hash is not a bcrypt hash of cost `BCRYPT_ROUNDS`."""
    match = _BCRYPT_HASH.fullmatch(password_hash)
    return match is None or int(match["cost"]) != BCRYPT_ROUNDS


def check_password_policy(password: str, *, email: str, user_inputs: Sequence[str] = ()) -> None:
    """Raise `PasswordPolicyError` when the password may not be set for this account."""
    secret = _encode(password)
    if "\0" in password:
        raise PasswordPolicyError(NUL_MESSAGE)
    if len(password) < MIN_PASSWORD_CHARACTERS:
        raise PasswordPolicyError(TOO_SHORT_MESSAGE)
    # Checked before zxcvbn, which is slow on long inputs and refuses more than 72 characters.
    if len(secret) > MAX_PASSWORD_BYTES:
        raise PasswordPolicyError(TOO_LONG_MESSAGE)
    if _contains_email(password, email):
        raise PasswordPolicyError(EMAIL_MESSAGE)
    inputs = [value for value in (email, *user_inputs) if value]
    with _zxcvbn_lock:
        result = zxcvbn(password, user_inputs=inputs)
    if result["score"] < MIN_ZXCVBN_SCORE:
        warning = str(result["feedback"].get("warning") or "").strip()
        raise PasswordPolicyError(
            " ".join(filter(None, [GUESSABLE_MESSAGE, warning, GUESSABLE_ADVICE]))
        )


def _encode(password: str) -> bytes:
    """The UTF-8 bytes of a password; refused if it holds lone surrogates."""
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        pass
    # Raised outside the handler: the UnicodeEncodeError holds the password in `.object`
    # and must not travel along as `__context__`.
    raise PasswordPolicyError(NOT_TEXT_MESSAGE)


def _hash(secret: bytes, rounds: int) -> bytes:
    """Blocking bcrypt hash of `secret` at cost `rounds`."""
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds))


def _verify(secret: bytes, stored: bytes | None, rounds: int) -> bool:
    """Blocking check of `secret` against `stored`, or against the dummy hash."""
    if stored is not None and len(secret) <= MAX_PASSWORD_BYTES:
        try:
            return bcrypt.checkpw(secret, stored)
        except ValueError:
            log.warning("Stored password hash is not a valid bcrypt hash")
    # No usable hash (or a password no stored hash can match): spend the same work anyway.
    bcrypt.checkpw(secret[:MAX_PASSWORD_BYTES], _dummy_hash(rounds))
    return False


@functools.cache
def _dummy_hash(rounds: int) -> bytes:
    """A bcrypt hash at cost `rounds` of a random secret nobody knows, made once per cost."""
    return bcrypt.hashpw(secrets.token_urlsafe(32).encode("ascii"), bcrypt.gensalt(rounds))


def _contains_email(password: str, email: str) -> bool:
    """Whether the password is or contains the email, or its local part of 4+ characters."""
    folded = password.casefold()
    address = email.strip().casefold()
    if not address:
        return False
    if folded == address:
        return True
    local, at, _domain = address.rpartition("@")
    if not at:
        return False
    # `name+tag@` counts as both `name+tag` and `name`.
    parts = {local, local.partition("+")[0]}
    return address in folded or any(
        len(part) >= _MIN_EMAIL_PART_CHARACTERS and part in folded for part in parts
    )
