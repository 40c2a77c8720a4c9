"""`weflux simulate` against a live server: every subcommand, and a dropped body reported."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from tests.fixtures.live import SECRET
from tests.fixtures.sandbox import Demo
from tests.fixtures.settings import make_settings
from weflux.cli import build_parser
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    MediaFile,
    MediaStatus,
    Message,
    MessageDirection,
    MessageStatus,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
)
from weflux.sandbox.simulate import Outcome, SimulateError, report, simulate
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER

pytest_plugins = ["tests.fixtures.sandbox"]

CUSTOMER = "15551230001"
# A 1x1 PNG: a real, small image file.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def _run(live: str, settings: Settings, *argv: str) -> Outcome:
    args = build_parser().parse_args(["simulate", *argv, "--url", live])
    outcome = await simulate(args, settings)
    assert outcome.http_status == 200, outcome.answer
    return outcome


async def _eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """The first truthy answer of `check` (a coroutine function), polled."""
    async with asyncio.timeout(within):
        while not (found := await check()):  # noqa: ASYNC110  (the server changes it)
            await asyncio.sleep(0.05)
    return found


async def _inbound(db: Database, workspace: Demo, kind: str) -> Message:
    async def check() -> Message | None:
        async with db.session(workspace.account.org_id) as session:
            statement = (
                select(Message)
                .join(Conversation, Conversation.id == Message.conversation_id)  # type: ignore[arg-type]
                .join(Contact, Contact.id == Conversation.contact_id)  # type: ignore[arg-type]
                .where(Contact.wa_id == CUSTOMER, Message.type == kind)
            )
            return (await session.exec(statement)).first()

    found: Message = await _eventually(check)
    return found


async def _media_failed(db: Database, workspace: Demo, message: Message) -> MediaFile:
    async def check() -> MediaFile | None:
        async with db.session(workspace.account.org_id) as session:
            statement = select(MediaFile).where(
                MediaFile.message_id == message.id, MediaFile.status == MediaStatus.FAILED
            )
            return (await session.exec(statement)).first()

    found: MediaFile = await _eventually(check, within=10.0)
    return found


async def test_simulated_messages_arrive_for_the_demo_number(
    live: str, db: Database, demo_workspace: Demo, live_settings: Settings, tmp_path: Path
) -> None:
    text = await _run(
        live, live_settings, "message", "--from", "+" + CUSTOMER, "--name", "Ana", "--text", "Hi"
    )
    assert "DROPPED" not in report(text)
    assert "Hi" in report(text)
    assert demo_workspace.account.webhook_key not in report(text)  # a capability: not shown
    hi = await _inbound(db, demo_workspace, "text")
    assert hi.text == "Hi"
    sent = text.body["entry"][0]["changes"][0]["value"]["messages"][0]
    assert abs(int(sent["timestamp"]) - hi.created_at.timestamp()) < 60  # current time

    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    # In test (not development) the server has no `POST /sandbox/media`: the file stays here.
    local = await _run(live, live_settings, "message", "--from", CUSTOMER, "--image", str(image))
    assert "NOTE: " in report(local)
    assert "stays local" in report(local)
    photo = await _inbound(db, demo_workspace, "image")
    assert photo.media is not None
    assert photo.media.get("sha256") == base64.b64encode(hashlib.sha256(PNG).digest()).decode()
    # The sandbox holds no such id: Meta's "no such object", failed at once, not retried.
    failed = await _media_failed(db, demo_workspace, photo)
    assert failed.attempts == 1
    assert failed.failure is not None
    assert failed.failure.startswith("Refused by WhatsApp: Unsupported get request")

    await _run(live, live_settings, "message", "--from", CUSTOMER, "--location", "38.72,-9.14")
    await _inbound(db, demo_workspace, "location")

    assert hi.wa_message_id is not None
    await _run(
        live,
        live_settings,
        "message",
        "--from",
        CUSTOMER,
        "--text",
        "About that",
        "--reply-to",
        hi.wa_message_id,
    )
    await _run(
        live,
        live_settings,
        "message",
        "--from",
        CUSTOMER,
        "--reaction",
        "👍",
        "--to-message",
        hi.wa_message_id,
    )

    async def reply_seen() -> bool:
        async with db.session(demo_workspace.account.org_id) as session:
            rows = (await session.exec(select(Message))).all()
        return any(row.reply_to_wa_message_id == hi.wa_message_id for row in rows)

    assert await _eventually(reply_seen)


async def test_simulated_status_quality_and_account_updates(
    live: str, db: Database, owner_db: Database, demo_workspace: Demo, live_settings: Settings
) -> None:
    account = demo_workspace.account
    async with db.session(account.org_id) as session:
        conversation = (await session.exec(select(Conversation))).first()
        assert conversation is not None
        outbound = Message(
            org_id=account.org_id,
            conversation_id=conversation.id,
            direction=MessageDirection.OUTBOUND,
            type="text",
            text="Your order ships today",
            status=MessageStatus.SENT,
            wa_message_id="wamid.simulated-status-0001",
        )
        session.add(outbound)
    await _run(
        live,
        live_settings,
        "status",
        "--message",
        "wamid.simulated-status-0001",
        "--status",
        "failed",
        "--error",
        "131049",
    )

    async def failed() -> Message | None:
        async with db.session(account.org_id) as session:
            row = await session.get(Message, outbound.id)
        return row if row is not None and row.status == MessageStatus.FAILED else None

    assert (await _eventually(failed)).error_code == 131049

    quality = await _run(live, live_settings, "quality", "--rating", "RED")
    change = quality.body["entry"][0]["changes"][0]
    assert change["field"] == "phone_number_quality_update"
    assert change["value"]["current_quality_rating"] == "RED"

    async def processed() -> bool:
        async with owner_db.session(all_workspaces="test: the stored webhooks") as session:
            rows = (await session.exec(select(WebhookEvent))).all()
        return bool(rows) and all(row.status == WebhookEventStatus.PROCESSED for row in rows)

    assert await _eventually(processed)

    await _run(live, live_settings, "account", "--event", "RESTRICTED")

    async def changed() -> bool:
        async with db.session(account.org_id) as session:
            row = await session.get(WhatsAppAccount, account.id)
        return row is not None and row.status == "RESTRICTED"

    assert await _eventually(changed)


async def test_a_body_for_an_unknown_number_is_reported_dropped_and_logged(
    live: str, demo_workspace: Demo, live_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="weflux.services.ingest")
    outcome = await _run(
        live,
        live_settings,
        "message",
        "--app-secret",
        SECRET,  # the platform's Meta app: the bare URL
        "--channel",
        "106540352242922",  # no channel of this database
        "--text",
        "Anyone there?",
    )
    assert outcome.dropped is not None
    assert "DROPPED" in report(outcome)

    async def logged() -> bool:
        return any(
            "dropped" in record.getMessage() and record.levelno == logging.WARNING
            for record in caplog.records
        )

    assert await _eventually(logged)


async def test_a_channel_the_database_does_not_have_is_refused_before_sending(
    live: str, demo_workspace: Demo, live_settings: Settings
) -> None:
    args = build_parser().parse_args(
        ["simulate", "quality", "--rating", "RED", "--channel", "1234", "--url", live]
    )
    with pytest.raises(SimulateError, match="no live channel"):
        await simulate(args, live_settings)


@pytest.mark.parametrize(
    "database",
    [
        None,  # var/weflux.db under tmp_path, which does not exist
        "postgresql+asyncpg://postgres@127.0.0.1:1/weflux",  # nothing listens on port 1
    ],
    ids=["no SQLite file", "unreachable PostgreSQL"],
)
async def test_a_database_without_the_channels_is_an_error_with_advice_not_a_traceback(
    tmp_path: Path, database: str | None
) -> None:
    """Given settings whose database is empty or unreachable (simulate run away from the
    server's directory, or with other settings)
    When the demo number is simulated
    Then it is refused before sending, saying which settings to run it with (exit 2),
    and leaves no empty SQLite file behind (before, SQLite created one where it ran)."""
    urls = {"database_url": database, "database_migration_url": database} if database else {}
    settings = make_settings(tmp_path, **urls)
    args = build_parser().parse_args(
        ["simulate", "message", "--text", "Hi", "--url", "http://127.0.0.1:9"]
    )
    with pytest.raises(SimulateError, match="the server's settings"):
        await simulate(args, settings)
    assert not (tmp_path / "var" / "weflux.db").exists()


@pytest.mark.parametrize("sender", ["+1234567", "+1 555 0100", "+999 123456789"])
async def test_a_sender_the_inbox_would_refuse_is_refused_before_sending(
    live: str, demo_workspace: Demo, live_settings: Settings, sender: str
) -> None:
    """Given a `--from` that createContact and startConversation refuse (the one rule)
    When a message from it is simulated
    Then nothing is sent: the error has the inbox's wording (before, 5 to 20 digits went)."""
    args = build_parser().parse_args(
        ["simulate", "message", "--from", sender, "--text", "Hi", "--url", live]
    )
    with pytest.raises(SimulateError) as refused:
        await simulate(args, live_settings)
    assert str(refused.value) == f"`{sender}`: {INVALID_PHONE_NUMBER}"


async def test_a_sender_becomes_the_contact_the_inbox_would_store(
    live: str, db: Database, demo_workspace: Demo, live_settings: Settings
) -> None:
    """Given `--from +44 (0)7700 900123` (a trunk 0 typed after the country code)
    When a message from it is simulated
    Then its contact's WhatsApp id is the E.164 number startConversation would store."""
    await _run(live, live_settings, "message", "--from", "+44 (0)7700 900123", "--text", "Hi")

    async def contact() -> Contact | None:
        async with db.session(demo_workspace.account.org_id) as session:
            statement = select(Contact).where(Contact.profile_name == "Customer 0123")
            return (await session.exec(statement)).first()

    found: Contact = await _eventually(contact)
    assert (found.wa_id, found.phone_number) == ("447700900123", "+447700900123")
