"""Sign-up by email confirmation (issue 9, item 10): no oracle, no squatting, no flooding.

`POST /auth/signup` answers the same 202 whatever the address; the mailbox's owner gets
either a confirmation link or a notice that they already have an account, and only
`POST /auth/signup/confirm` creates anything.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import update
from sqlmodel import select

from tests.fixtures.api import login
from tests.fixtures.app import app_client, client_of, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor, create_user
from tests.fixtures.live import free_port
from tests.fixtures.mail import body_of, confirmation_token, mails_to, outbox
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import Database
from weflux.mail.mailer import OUTBOX_DIR
from weflux.models import Organization, PendingSignup, User, utcnow

APP_URL = "https://app.weflux.test"
STRONG = "quartz-Lantern-meadow-58"
SQUATTER = "squatter-Chosen-pass-77"
NEWCOMER = "peter@initech.example"
VARYING_HEADERS = {"date", "x-request-id", "content-length"}


def signup_body(**overrides: Any) -> dict[str, Any]:
    return {
        "organizationName": "Initech",
        "name": "Peter Gibbons",
        "email": NEWCOMER,
        "password": STRONG,
    } | overrides


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        app_url=APP_URL,
    )


async def confirm(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/signup/confirm", json={"token": token})


async def pending(owner: Database) -> list[PendingSignup]:
    """Every pending sign-up (the schema owner's view: the app's role sees only the one
    whose token it holds, on PostgreSQL)."""
    async with owner.session(all_workspaces="test: every pending sign-up") as session:
        return list((await session.exec(select(PendingSignup))).all())


async def users_named(owner: Database, email: str) -> list[User]:
    """Accounts with this email, members of a workspace or not (the owner's view)."""
    async with owner.session(all_workspaces="test: accounts by email") as session:
        return list((await session.exec(select(User).where(User.email == email))).all())


# --- one answer for every address ------------------------------------------------------


async def test_signup_answers_alike_whether_or_not_the_email_has_an_account(
    client: httpx.AsyncClient, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given admin@acme.example has an account, when someone signs up with it and with a
    new address, then both answers are the same 202, byte for byte and header for
    header (today: 201 and 409 CONFLICT), and each costs one bcrypt hash."""
    hashes: list[bytes] = []
    real_hashpw = bcrypt.hashpw

    def counting(password: bytes, salt: bytes) -> bytes:
        hashes.append(salt)
        return bytes(real_hashpw(password, salt))

    monkeypatch.setattr(bcrypt, "hashpw", counting)

    taken = await client.post("/auth/signup", json=signup_body(email=admin.user.email))
    after_taken = len(hashes)
    fresh = await client.post("/auth/signup", json=signup_body())

    assert taken.status_code == fresh.status_code == 202
    assert taken.content == fresh.content == b'{"status":"CONFIRMATION_SENT"}'
    assert {k: v for k, v in taken.headers.items() if k not in VARYING_HEADERS} == {
        k: v for k, v in fresh.headers.items() if k not in VARYING_HEADERS
    }
    assert after_taken == 1
    assert len(hashes) == 2


async def test_a_new_address_gets_a_link_to_the_app_and_nothing_exists_yet(
    client: httpx.AsyncClient, db: Database, settings: Settings, owner_db: Database
) -> None:
    """Given a new address, then one email with a link to WEFLUX_APP_URL (the token in
    the fragment, which never reaches a server log), a pending sign-up that stores the
    token's hash and a bcrypt hash, and no user or workspace until it is confirmed."""
    response = await client.post("/auth/signup", json=signup_body())

    assert response.status_code == 202
    [mail] = mails_to(settings, NEWCOMER)
    token = confirmation_token(mail)
    assert f"{APP_URL}/signup/confirm#token={token}" in body_of(mail)
    assert "Initech" not in body_of(mail)
    assert "Peter" not in body_of(mail)
    [row] = await pending(owner_db)
    assert row.email == NEWCOMER
    assert token not in repr(row.model_dump())
    assert row.password_hash.startswith("$2b$")
    assert STRONG not in repr(row.model_dump())
    assert await users_named(owner_db, NEWCOMER) == []
    assert (await login(client, NEWCOMER, STRONG)).status_code == 401


async def test_an_address_with_an_account_gets_a_notice_and_no_pending_signup(
    client: httpx.AsyncClient, db: Database, settings: Settings, admin: Actor, owner_db: Database
) -> None:
    """The owner learns that someone tried; there is no link, nothing is stored, and the
    account (its password, its workspaces) is unchanged."""
    response = await client.post(
        "/auth/signup", json=signup_body(email="  Admin@ACME.example ", password=SQUATTER)
    )

    assert response.status_code == 202
    [mail] = mails_to(settings, admin.user.email)
    assert "already has a Weflux account" in body_of(mail)
    assert f"{APP_URL}/login" in body_of(mail)
    assert "#token=" not in body_of(mail)
    assert await pending(owner_db) == []
    assert (await login(client, admin.user.email, SQUATTER)).status_code == 401


# --- confirmation ----------------------------------------------------------------------


async def test_a_squatter_who_never_confirms_blocks_nobody(
    client: httpx.AsyncClient, db: Database, settings: Settings, owner_db: Database
) -> None:
    """Given a squatter signed up first with Peter's address and their own password,
    when Peter signs up and confirms his own link, then Peter's workspace exists with
    Peter's password, the squatter's password opens nothing, and the squatter's link
    (were it ever forwarded) opens nothing either: the address has an account (409),
    and the link is spent."""
    squatted = await client.post(
        "/auth/signup", json=signup_body(organizationName="Squat Inc", password=SQUATTER)
    )
    assert squatted.status_code == 202
    real = await client.post("/auth/signup", json=signup_body())
    assert real.status_code == 202
    squatter_mail, peter_mail = mails_to(settings, NEWCOMER)
    assert len(await pending(owner_db)) == 2

    confirmed = await confirm(client, confirmation_token(peter_mail))

    assert confirmed.status_code == 201, confirmed.text
    assert confirmed.json()["organization"]["name"] == "Initech"
    assert confirmed.json()["member"]["role"] == "ADMIN"
    assert (await login(client, NEWCOMER, STRONG)).status_code == 200
    assert (await login(client, NEWCOMER, SQUATTER)).status_code == 401
    assert (await confirm(client, confirmation_token(squatter_mail))).status_code == 409
    assert await pending(owner_db) == []
    assert (await login(client, NEWCOMER, SQUATTER)).status_code == 401


async def test_a_confirmation_link_works_once(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert (await client.post("/auth/signup", json=signup_body())).status_code == 202
    token = confirmation_token(mails_to(settings, NEWCOMER)[0])

    first = await confirm(client, token)
    second = await confirm(client, token)

    assert first.status_code == 201
    assert second.status_code == 404
    assert second.json()["error"]["code"] == "NOT_FOUND"


async def test_an_expired_link_is_refused_like_an_unknown_one(
    client: httpx.AsyncClient, db: Database, settings: Settings, owner_db: Database
) -> None:
    assert (await client.post("/auth/signup", json=signup_body())).status_code == 202
    token = confirmation_token(mails_to(settings, NEWCOMER)[0])
    async with owner_db.session(all_workspaces="test: expire the link") as session:
        await session.exec(update(PendingSignup).values(expires_at=utcnow() - timedelta(seconds=1)))

    expired = await confirm(client, token)
    unknown = await confirm(client, "x" * 43)

    assert expired.status_code == 404
    assert expired.content == unknown.content
    assert await users_named(owner_db, NEWCOMER) == []


async def test_confirming_after_the_address_got_an_account_is_a_conflict(
    client: httpx.AsyncClient, db: Database, owner_db: Database, settings: Settings
) -> None:
    """Given a pending sign-up, when the address gets an account meanwhile (through an
    invitation, say), then confirming answers 409 CONFLICT, creates no workspace, and
    the link is spent."""
    assert (await client.post("/auth/signup", json=signup_body())).status_code == 202
    token = confirmation_token(mails_to(settings, NEWCOMER)[0])
    async with db.session() as session:
        await create_user(session, email=NEWCOMER)

    conflict = await confirm(client, token)

    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "CONFLICT"
    async with owner_db.session(all_workspaces="test: count workspaces") as session:
        names = (await session.exec(select(Organization.name))).all()
    assert "Initech" not in names
    assert (await confirm(client, token)).status_code == 404


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_confirmation_body_is_validated(client: httpx.AsyncClient) -> None:
    missing = await client.post("/auth/signup/confirm", json={})
    smuggled = await client.post("/auth/signup/confirm", json={"token": "t", "role": "ADMIN"})

    assert missing.status_code == smuggled.status_code == 422
    assert [d["field"] for d in missing.json()["error"]["details"]] == ["token"]
    assert [d["field"] for d in smuggled.json()["error"]["details"]] == ["role"]


# --- limits ----------------------------------------------------------------------------


async def test_signups_per_address_are_limited_so_nobody_floods_a_mailbox(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Given 3 sign-ups an hour per address, when 5 arrive from 5 IPs, then 3 are
    answered 202 and 2 are 429 with Retry-After, for a new address and an existing
    one alike (no oracle), and each mailbox receives 3 emails."""
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        rate_limit_signup_email="3/hour",
    )
    statuses: dict[str, list[int]] = {}
    async with lifespan(create_app(settings)) as manager:
        for address in (NEWCOMER, admin.user.email):
            statuses[address] = []
            for n in range(5):
                async with client_of(manager.app, f"198.51.100.{n}", "http://t") as client:
                    response = await client.post("/auth/signup", json=signup_body(email=address))
                statuses[address].append(response.status_code)
                if response.status_code == 429:
                    assert int(response.headers["retry-after"]) >= 1
                    assert response.json()["error"]["code"] == "RATE_LIMITED"

    assert statuses == {NEWCOMER: [202] * 3 + [429] * 2, admin.user.email: [202] * 3 + [429] * 2}
    assert len(mails_to(settings, NEWCOMER)) == 3
    assert len(mails_to(settings, admin.user.email)) == 3


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_weak_password_is_refused_before_the_address_is_counted(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        rate_limit_signup_email="1/hour",
    )
    async with app_client(settings, "198.51.100.1", "http://t") as client:
        weak = await client.post("/auth/signup", json=signup_body(password="password1234"))
        strong = await client.post("/auth/signup", json=signup_body())

    assert weak.status_code == 422
    assert strong.status_code == 202
    assert len(outbox(settings)) == len(mails_to(settings, NEWCOMER)) == 1


# --- where the mail goes ---------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_outbox_file_is_private_and_the_log_names_only_its_path(
    client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Without WEFLUX_SMTP_URL (outside production) each email is an .eml file only its
    owner can read, under var/outbox/; the log line has its path, never the link."""
    with caplog.at_level(logging.DEBUG):
        assert (await client.post("/auth/signup", json=signup_body())).status_code == 202

    directory = settings.var_dir / OUTBOX_DIR
    [path] = list(directory.glob("*.eml"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    token = confirmation_token(mails_to(settings, NEWCOMER)[0])
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert str(path) in logged
    assert token not in logged
    assert STRONG not in logged


class Inbox:
    """An aiosmtpd handler keeping what it is given."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.messages.append(bytes(envelope.original_content or b""))
        self.arrived.set()
        return "250 Message accepted"


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_with_an_smtp_url_the_mail_goes_through_that_server(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given WEFLUX_SMTP_URL=smtp://127.0.0.1:<port> (plain, loopback only) and a
    sender, when someone signs up, then a real SMTP server receives the confirmation
    from that sender, and nothing is written to the outbox."""
    with smtp_server() as (inbox, port):
        settings = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            smtp_url=f"smtp://127.0.0.1:{port}",
            smtp_from="signup@weflux.example",
            app_url=APP_URL,
        )
        async with app_client(settings, "198.51.100.1", "http://t") as client:
            response = await client.post("/auth/signup", json=signup_body())
            assert response.status_code == 202
            assert inbox.arrived.wait(10)

    [raw] = inbox.messages
    message = message_from_bytes(raw, policy=policy.default)
    assert "signup@weflux.example" in str(message["From"])
    assert str(message["To"]) == NEWCOMER
    assert f"{APP_URL}/signup/confirm#token=" in raw.decode()
    assert outbox(settings) == []


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_mail_server_that_is_down_changes_nothing_in_the_answer(
    database_urls: DatabaseUrls, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given WEFLUX_SMTP_URL pointing at a closed port, when someone signs up, then the
    answer is still the same 202 (the mail is sent after it) and the failure is logged
    without the message or its link."""
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        smtp_url=f"smtp://127.0.0.1:{free_port()}",
        smtp_from="signup@weflux.example",
    )
    with caplog.at_level(logging.INFO):
        async with app_client(settings, "198.51.100.1", "http://t") as client:
            response = await client.post("/auth/signup", json=signup_body())

    assert response.status_code == 202
    assert response.content == b'{"status":"CONFIRMATION_SENT"}'
    failures = [r for r in caplog.records if r.getMessage() == "email not delivered"]
    assert len(failures) == 1
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "#token=" not in logged
    assert STRONG not in logged
