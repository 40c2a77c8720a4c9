"""Password hashing, verification and the password policy."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import bcrypt
import pytest

from weflux.auth import passwords
from weflux.auth.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
    warm_up,
)
from weflux.config import PASSWORD_HASHING_QUEUE, PASSWORD_HASHING_WORKERS

EMAIL = "alice.smith+news@example.com"
STRONG = "glacier-velvet-orbit-42"
# 68 bytes of Cyrillic, an emoji and umlauts; zxcvbn rates it 4 (of 4).
MULTIBYTE_BASE = "Жёлтый-кот-прыгает-через-забор-🦊-ünd-7"
EXACTLY_72_BYTES = MULTIBYTE_BASE + "-ßq"
EXACTLY_73_BYTES = MULTIBYTE_BASE + "-ßé"


@pytest.fixture(autouse=True)
def _fast_bcrypt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt at cost 4 for speed, unless the test asks for `real_bcrypt_cost`."""
    if "real_bcrypt_cost" not in request.fixturenames:
        monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def real_bcrypt_cost() -> None:
    """Keep the production cost: `_fast_bcrypt` leaves `BCRYPT_ROUNDS` alone."""


class BcryptCalls:
    """Records the calls to `bcrypt.hashpw` and `bcrypt.checkpw`, and the thread of each."""

    def __init__(self) -> None:
        self.hashpw: list[bytes] = []
        self.checkpw: list[bytes] = []
        self.threads: set[int] = set()

    def wrap(self, real: Callable[..., Any], calls: list[bytes]) -> Callable[..., Any]:
        def recording(password: bytes, salt_or_hash: bytes) -> Any:
            calls.append(salt_or_hash)
            self.threads.add(threading.get_ident())
            return real(password, salt_or_hash)

        return recording


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> BcryptCalls:
    calls = BcryptCalls()
    monkeypatch.setattr(bcrypt, "hashpw", calls.wrap(bcrypt.hashpw, calls.hashpw))
    monkeypatch.setattr(bcrypt, "checkpw", calls.wrap(bcrypt.checkpw, calls.checkpw))
    return calls


def policy_error(password: str, *, email: str = EMAIL, user_inputs: tuple[str, ...] = ()) -> str:
    """The message `check_password_policy` refuses the password with."""
    with pytest.raises(PasswordPolicyError) as refused:
        check_password_policy(password, email=email, user_inputs=user_inputs)
    return str(refused.value)


# Hashing and verification


async def test_hash_with_the_default_cost_is_bcrypt_2b_at_cost_12(real_bcrypt_cost: None) -> None:
    # Given the production constant
    assert passwords.BCRYPT_ROUNDS == 12

    # When a password is hashed
    hashed = await hash_password(STRONG)

    # Then it is a `$2b$` bcrypt hash of cost 12, which no longer needs a rehash
    assert hashed.startswith("$2b$12$")
    assert len(hashed) == 60
    assert not needs_rehash(hashed)


async def test_hash_uses_bcrypt_rounds_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 5)

    assert (await hash_password(STRONG)).startswith("$2b$05$")


async def test_correct_password_verifies_against_its_hash() -> None:
    hashed = await hash_password(STRONG)

    assert await verify_password(STRONG, hashed) is True


async def test_multibyte_password_of_72_bytes_round_trips() -> None:
    hashed = await hash_password(EXACTLY_72_BYTES)

    assert await verify_password(EXACTLY_72_BYTES, hashed) is True
    assert await verify_password(EXACTLY_72_BYTES[:-1], hashed) is False


async def test_wrong_password_does_not_verify() -> None:
    hashed = await hash_password(STRONG)

    assert await verify_password(STRONG + "!", hashed) is False
    assert await verify_password(STRONG.upper(), hashed) is False
    assert await verify_password("", hashed) is False


async def test_same_password_hashes_differently_each_time() -> None:
    first, second = await hash_password(STRONG), await hash_password(STRONG)

    assert first != second
    assert await verify_password(STRONG, first)
    assert await verify_password(STRONG, second)


async def test_wrong_password_costs_exactly_one_bcrypt_check(bcrypt_calls: BcryptCalls) -> None:
    # Given a stored hash
    hashed = await hash_password(STRONG)

    # When a wrong password is checked
    assert await verify_password("not-the-password", hashed) is False

    # Then bcrypt compared it once, against the stored hash
    assert bcrypt_calls.checkpw == [hashed.encode()]


async def test_unknown_email_costs_a_full_bcrypt_check_against_a_dummy_of_the_same_cost(
    bcrypt_calls: BcryptCalls,
) -> None:
    # Given no stored hash (the email is unknown)
    # When a password is checked
    verified = await verify_password(STRONG, None)

    # Then it is refused, after one real bcrypt check at the current cost
    assert verified is False
    assert len(bcrypt_calls.checkpw) == 1
    assert bcrypt_calls.checkpw[0].startswith(b"$2b$04$")


async def test_dummy_hash_follows_the_cost_in_force_at_call_time(
    monkeypatch: pytest.MonkeyPatch, bcrypt_calls: BcryptCalls
) -> None:
    # Given a cost raised after the dummy hash of the old cost was made
    await verify_password(STRONG, None)
    monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 5)

    # When an unknown email is checked again
    assert await verify_password(STRONG, None) is False

    # Then the dummy hash has the new cost, as a real hash made now would
    assert [h[:7] for h in bcrypt_calls.checkpw] == [b"$2b$04$", b"$2b$05$"]


async def test_dummy_hash_is_made_once_and_warm_up_makes_it_ahead(
    bcrypt_calls: BcryptCalls,
) -> None:
    # Given a fresh process that warmed up at start-up
    passwords._dummy_hash.cache_clear()
    await warm_up()
    assert len(bcrypt_calls.hashpw) == 1

    # When unknown emails are checked
    assert await verify_password(STRONG, None) is False
    assert await verify_password("another-guess-entirely", None) is False

    # Then no further hash was made: both checks reused the cached dummy
    assert len(bcrypt_calls.hashpw) == 1
    assert len(bcrypt_calls.checkpw) == 2
    assert bcrypt_calls.checkpw[0] == bcrypt_calls.checkpw[1]


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "!",
        "not-a-bcrypt-hash",
        "$2b$04$short",
        "$2b$99$" + "a" * 53,
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "$2b$04$ÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉ",
        "\ud800",
    ],
)
async def test_malformed_stored_hash_is_refused_quietly_at_full_cost(
    malformed: str, bcrypt_calls: BcryptCalls, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a stored hash bcrypt cannot read
    # When a password is checked against it
    with caplog.at_level(logging.DEBUG, logger="weflux.auth.passwords"):
        verified = await verify_password(STRONG, malformed)

    # Then it is refused without raising, after a full check of the dummy hash,
    # and nothing logged mentions the password
    assert verified is False
    assert bcrypt_calls.checkpw[-1].startswith(b"$2b$04$")
    assert STRONG not in caplog.text


async def test_truncated_stored_hash_is_refused() -> None:
    hashed = await hash_password(STRONG)

    assert await verify_password(STRONG, hashed[:-1]) is False


async def test_password_over_72_bytes_never_verifies_even_against_its_first_72_bytes(
    bcrypt_calls: BcryptCalls,
) -> None:
    # Given a hash of exactly 72 bytes (bcrypt 4 silently truncated longer input to this)
    hashed = await hash_password(EXACTLY_72_BYTES)

    # When the same password with more bytes after it is checked
    verified = await verify_password(EXACTLY_72_BYTES + "tail", hashed)

    # Then it is refused, still at the cost of one check
    assert verified is False
    assert len(bcrypt_calls.checkpw) == 1


async def test_password_with_lone_surrogate_is_refused_without_raising() -> None:
    hashed = await hash_password(STRONG)

    assert await verify_password(STRONG + "\ud800", hashed) is False
    assert await verify_password("\udfff", None) is False


async def test_hash_password_refuses_over_72_bytes_instead_of_truncating() -> None:
    with pytest.raises(PasswordPolicyError) as refused:
        await hash_password(EXACTLY_73_BYTES)

    assert "72 bytes" in str(refused.value)
    assert EXACTLY_73_BYTES not in str(refused.value)


async def test_hashing_and_verifying_run_off_the_event_loop_thread(
    bcrypt_calls: BcryptCalls,
) -> None:
    # Given the thread running the event loop
    loop_thread = threading.get_ident()
    passwords._dummy_hash.cache_clear()

    # When hashing, verifying and warming up
    hashed = await hash_password(STRONG)
    await verify_password(STRONG, hashed)
    await verify_password(STRONG, None)
    await warm_up()

    # Then bcrypt ran, and never on the event loop thread
    assert bcrypt_calls.hashpw
    assert bcrypt_calls.checkpw
    assert bcrypt_calls.threads
    assert loop_thread not in bcrypt_calls.threads


async def test_hashing_runs_in_the_dedicated_bcrypt_pool_not_the_shared_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given asyncio's shared default executor, watched
    offloaded: list[str] = []
    real_to_thread = asyncio.to_thread

    async def recording_to_thread(func: Callable[..., Any], /, *args: Any) -> Any:
        offloaded.append(func.__name__)
        return await real_to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", recording_to_thread)
    threads: list[str] = []
    real_checkpw = bcrypt.checkpw

    def naming_checkpw(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.current_thread().name)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", naming_checkpw)

    # When a password is hashed and checked
    hashed = await hash_password(STRONG)
    assert await verify_password(STRONG, hashed) is True

    # Then bcrypt ran in the pool's own threads, never through asyncio.to_thread
    assert offloaded == []
    assert threads
    assert all(name.startswith("bcrypt") for name in threads), threads


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Block (in a thread) until `condition` holds; False if it never did."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class BlockingCheck:
    """A `bcrypt.checkpw` that holds its thread until released, counting calls at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0
        self.release = threading.Event()
        self.two_running = threading.Event()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
            if self.running >= 2:
                self.two_running.set()
        self.release.wait(10)
        with self.lock:
            self.running -= 1
        return False


async def test_the_bcrypt_pool_runs_at_most_its_workers_and_refuses_beyond_its_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a pool of 2 threads and a queue of 3, when 8 password checks arrive at once
    while bcrypt is held, then 2 run, 3 wait, the other 3 are refused at once with
    RATE_LIMITED (no bcrypt for them), and once released the 5 admitted complete."""
    passwords.configure_pool(2, 3)
    check = BlockingCheck()
    monkeypatch.setattr(bcrypt, "checkpw", check)
    try:
        tasks = [asyncio.create_task(verify_password(STRONG, None)) for _ in range(8)]
        assert await asyncio.to_thread(check.two_running.wait, 10)
        await asyncio.sleep(0)  # every task has had its turn to be admitted or refused

        refused = [task for task in tasks if task.done()]
        assert len(refused) == 3
        for task in refused:
            error = task.exception()
            assert isinstance(error, passwords.PasswordHashingBusy)
            assert error.code == "RATE_LIMITED"
            assert error.retry_after == 1
        assert passwords.pool().admitted == 5
        assert check.running == 2

        check.release.set()
        admitted = [task for task in tasks if task not in refused]
        assert await asyncio.gather(*admitted) == [False] * 5
        assert check.most == 2
        assert check.started == 5
        assert passwords.pool().admitted == 0
    finally:
        check.release.set()
        passwords.configure_pool(PASSWORD_HASHING_WORKERS, PASSWORD_HASHING_QUEUE)


async def test_a_cancelled_check_keeps_its_slot_until_its_thread_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a pool of 1 thread and no queue, busy with a check whose caller gave up,
    then the next check is still refused: the bound counts threads, not callers."""
    passwords.configure_pool(1, 0)
    check = BlockingCheck()
    monkeypatch.setattr(bcrypt, "checkpw", check)
    try:
        first = asyncio.create_task(verify_password(STRONG, None))
        assert await asyncio.to_thread(wait_until, lambda: check.started == 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

        with pytest.raises(passwords.PasswordHashingBusy):
            await verify_password(STRONG, None)

        check.release.set()
        assert await asyncio.to_thread(wait_until, lambda: passwords.pool().admitted == 0)
        assert await verify_password(STRONG, None) is False
    finally:
        check.release.set()
        passwords.configure_pool(PASSWORD_HASHING_WORKERS, PASSWORD_HASHING_QUEUE)


# Rehash


async def test_hash_of_the_current_cost_needs_no_rehash() -> None:
    assert needs_rehash(await hash_password(STRONG)) is False


@pytest.mark.parametrize("cost", [5, 13])
def test_hash_of_another_cost_needs_rehash(cost: int) -> None:
    hashed = bcrypt.hashpw(b"whatever", bcrypt.gensalt(cost)).decode()

    assert needs_rehash(hashed) is True


@pytest.mark.parametrize("malformed", ["", "!", "$2b$04$short", "$2b$٠٤$" + "a" * 53])
def test_malformed_hash_needs_rehash(malformed: str) -> None:
    assert needs_rehash(malformed) is True


# Policy


@pytest.mark.parametrize(
    "password",
    [
        STRONG,
        "qZ7#vR2!mK9p",  # exactly 12 characters
        EXACTLY_72_BYTES,
        "bob-likes-glacier-velvet-9",  # a short local part may appear
    ],
)
def test_strong_password_is_accepted(password: str) -> None:
    check_password_policy(password, email="bob@example.com")


def test_password_under_12_characters_is_refused() -> None:
    message = policy_error("qZ7#vR2!mK9")

    assert message == "Your password must be at least 12 characters long."


def test_short_password_is_refused_even_when_multibyte_characters_make_12_bytes() -> None:
    # Given 6 Cyrillic letters: 12 bytes, but only 6 characters
    password = "ЖзЙкЛм"
    assert len(password.encode()) == 12

    assert "at least 12 characters" in policy_error(password)


def test_password_of_exactly_72_bytes_in_multibyte_characters_is_accepted() -> None:
    # Given a strong password of 41 characters that takes exactly 72 bytes
    assert len(EXACTLY_72_BYTES) == 41
    assert len(EXACTLY_72_BYTES.encode()) == 72

    # Then it is accepted
    check_password_policy(EXACTLY_72_BYTES, email=EMAIL)


def test_password_of_73_bytes_in_multibyte_characters_is_refused_with_the_reason() -> None:
    # Given the same password, its last letter made accented: 73 bytes in 41 characters
    assert len(EXACTLY_73_BYTES) == 41
    assert len(EXACTLY_73_BYTES.encode()) == 73

    # When it is checked
    message = policy_error(EXACTLY_73_BYTES)

    # Then the message says bcrypt would silently ignore the bytes beyond 72
    assert "at most 72 bytes" in message
    assert "bcrypt" in message
    assert "silently ignored" in message


def test_thirty_emoji_are_refused_as_too_long_because_bytes_are_counted() -> None:
    password = "🦊🐙🦉" * 10
    assert len(password) == 30
    assert len(password.encode()) == 120

    assert "at most 72 bytes" in policy_error(password)


@pytest.mark.parametrize(
    "password",
    [
        EMAIL,
        EMAIL.upper(),
        f"my {EMAIL} pw",
        "my-ALICE.SMITH+NEWS-key",  # the whole local part, another case
        "xx-Alice.Smith-velvet-42",  # the local part without its +tag
    ],
)
def test_password_made_from_the_email_is_refused(password: str) -> None:
    message = policy_error(password)

    assert message == (
        "Your password must not contain your email address or the name before the @."
    )


def test_password_equal_to_an_email_with_a_short_local_part_is_refused() -> None:
    assert "email address" in policy_error("Bob@Example.com", email="bob@example.com")


@pytest.mark.parametrize(
    ("password", "warning"),
    [
        ("password1234", "This is a very common password."),
        ("1234567890ab", "This is similar to a commonly used password."),
        ("abcdefghijklmnop", 'Sequences like "abc" or "6543" are easy to guess.'),
        ("qwertyuiopasdf", "This is similar to a commonly used password."),
    ],
)
def test_guessable_password_is_refused_with_the_zxcvbn_warning(password: str, warning: str) -> None:
    message = policy_error(password)

    assert message.startswith("This password is too easy to guess.")
    assert warning in message


def test_password_guessable_from_the_user_inputs_is_refused() -> None:
    # Given a password strong on its own, but made of the workspace's name
    password = "harborview2024"
    check_password_policy(password, email=EMAIL)

    # When the workspace's name is among the user inputs
    message = policy_error(password, user_inputs=("Harborview",))

    # Then it is refused, with advice even though zxcvbn gives no warning
    assert message == (
        "This password is too easy to guess. Try a longer phrase made of several uncommon words."
    )


def test_zxcvbn_sees_the_email_and_the_user_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_zxcvbn(password: str, user_inputs: list[str]) -> dict[str, Any]:
        seen.append(user_inputs)
        return {"score": 4, "feedback": {"warning": "", "suggestions": []}}

    monkeypatch.setattr(passwords, "zxcvbn", fake_zxcvbn)

    check_password_policy(STRONG, email=EMAIL, user_inputs=["Alice Smith", "Harborview"])

    assert seen == [[EMAIL, "Alice Smith", "Harborview"]]


def test_password_with_a_nul_character_is_refused() -> None:
    assert policy_error("glacier-velvet\0orbit-42") == (
        "Your password must not contain NUL (zero) characters."
    )


def test_password_with_a_lone_surrogate_is_refused_without_carrying_it_along() -> None:
    with pytest.raises(PasswordPolicyError) as refused:
        check_password_policy(STRONG + "\ud800", email=EMAIL)

    assert str(refused.value) == "Your password contains characters that are not valid text."
    # The UnicodeEncodeError, which holds the password, is not chained to the error.
    assert refused.value.__context__ is None
    assert refused.value.__cause__ is None


@pytest.mark.parametrize(
    "password",
    [
        "qZ7#vR2!mK9",
        "ЖзЙкЛм",
        EXACTLY_73_BYTES,
        "🦊🐙🦉" * 10,
        EMAIL,
        "my-alice.smith-velvet-42",
        "password1234",
        "harborview2024",
        "glacier-velvet\0orbit-42",
        STRONG + "\ud800",
    ],
)
def test_policy_messages_never_contain_the_password(password: str) -> None:
    with pytest.raises(PasswordPolicyError) as refused:
        check_password_policy(password, email=EMAIL, user_inputs=["Harborview"])

    for text in (str(refused.value), repr(refused.value), repr(refused.value.args)):
        assert password not in text
    assert refused.value.__context__ is None


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PasswordPolicyError, ValueError)
