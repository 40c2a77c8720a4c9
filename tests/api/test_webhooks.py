"""Webhooks: verified before anything, stored before 200, processed once, routed right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.api import gql, token_for
from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.inbound import outbound_message, stored_message
from tests.fixtures.settings import make_settings
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Message,
    MessageDirection,
    MessageStatus,
    MessageTemplate,
    Organization,
    TemplateStatusEvent,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.runtime import runtime_of
from weflux.services import webhook_queue
from weflux.services.ingest import process

PLATFORM_SECRET = "platform-app-secret-0123456789"
PLATFORM_VERIFY = "platform-verify-token-0123"
CHANNEL_SECRET = "channel-app-secret-abcdef0123"
CHANNEL_VERIFY = "channel-verify-token-abcd"


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=PLATFORM_SECRET,
        meta_verify_token=PLATFORM_VERIFY,
    )


async def _channel(
    db: Database,
    settings: Settings,
    org: Organization,
    *,
    phone_number_id: str = wh.PHONE_NUMBER_ID,
    key: str = "channel-key-0000000000000000000001",
) -> WhatsAppAccount:
    keyring = KeyRing.from_settings(settings)
    async with db.session(org.id) as session:
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=phone_number_id,
            business_account_id=wh.WABA_ID,
            webhook_key=key,
            credentials_updated_at=utcnow(),
            status="CONNECTED",
        )
        seal(keyring, account, "app_secret_enc", CHANNEL_SECRET)
        seal(keyring, account, "webhook_verify_token_enc", CHANNEL_VERIFY)
        session.add(account)
    return account


@pytest.fixture
async def channel(db: Database, settings: Settings, org: Organization) -> WhatsAppAccount:
    return await _channel(db, settings, org)


async def post(
    client: httpx.AsyncClient,
    body: Any,
    *,
    secret: str = PLATFORM_SECRET,
    path: str = "/webhooks/whatsapp",
    raw: bytes | None = None,
    signature: str | None = None,
) -> httpx.Response:
    content = raw if raw is not None else wh.encode(body)
    headers = {"Content-Type": "application/json"}
    header = signature if signature is not None else wh.sign(content, secret)
    if header:
        headers["X-Hub-Signature-256"] = header
    return await client.post(path, content=content, headers=headers)


async def _count(owner_db: Database, model: Any) -> int:
    async with owner_db.session(all_workspaces="test: count rows") as session:
        return int((await session.exec(select(func.count()).select_from(model))).one())


async def _messages(db: Database, org_id: Any) -> list[Message]:
    async with db.session(org_id) as session:
        return list((await session.exec(select(Message).order_by(col(Message.id)))).all())


def _one_text(body: str = "Hello", **extra: Any) -> dict[str, Any]:
    return wh.webhook_body(
        wh.messages_change(messages=[wh.text_message(body=body, **extra)], contacts=[wh.contact()])
    )


# --- the handshake ---


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_handshake_echoes_the_challenge_for_the_right_token(
    client: httpx.AsyncClient, channel: WhatsAppAccount
) -> None:
    for path, token in (
        ("/webhooks/whatsapp", PLATFORM_VERIFY),
        (f"/webhooks/whatsapp/{channel.webhook_key}", CHANNEL_VERIFY),
    ):
        ok = await client.get(
            path,
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": token,
                "hub.challenge": "1158201444",
            },
        )
        assert ok.status_code == 200
        assert ok.text == "1158201444"
        assert ok.headers["content-type"].startswith("text/plain")
        for params in (
            {"hub.mode": "subscribe", "hub.verify_token": token + "x", "hub.challenge": "1"},
            {"hub.mode": "unsubscribe", "hub.verify_token": token, "hub.challenge": "1"},
            {"hub.verify_token": token, "hub.challenge": "1"},
            {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "<script>"},
        ):
            assert (await client.get(path, params=params)).status_code == 403
    # the channel's token does not open the platform URL, nor the reverse
    crossed = await client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": CHANNEL_VERIFY, "hub.challenge": "1"},
    )
    assert crossed.status_code == 403
    unknown = await client.get("/webhooks/whatsapp/no-such-key", params={"hub.mode": "subscribe"})
    assert unknown.status_code == 404


# --- verification before anything ---


@pytest.mark.parametrize(
    "signature",
    ["", "sha256=" + "0" * 64, "sha1=" + "a" * 40, "sha256=zz", "garbage", "SHA256=" + "0" * 64],
)
async def test_a_missing_or_wrong_signature_is_401_with_no_side_effect(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    channel: WhatsAppAccount,
    signature: str,
) -> None:
    response = await post(client, _one_text(), signature=signature)
    assert response.status_code == 401
    assert await _count(owner_db, WebhookEvent) == 0
    assert await _count(owner_db, Message) == 0


async def test_the_platform_secret_does_not_sign_for_a_channel(
    client: httpx.AsyncClient, db: Database, channel: WhatsAppAccount
) -> None:
    keyed = f"/webhooks/whatsapp/{channel.webhook_key}"
    assert (await post(client, _one_text(), path=keyed)).status_code == 401
    assert (await post(client, _one_text(), path=keyed, secret=CHANNEL_SECRET)).status_code == 200
    assert (await post(client, _one_text(), secret=CHANNEL_SECRET)).status_code == 401
    assert (await post(client, _one_text(), path="/webhooks/whatsapp/nope")).status_code == 404


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_body_over_3_mb_is_413(
    client: httpx.AsyncClient, db: Database, owner_db: Database
) -> None:
    raw = b'{"object":"whatsapp_business_account","pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = await post(client, None, raw=raw)
    assert response.status_code == 413
    assert await _count(owner_db, WebhookEvent) == 0


# --- stored, then processed ---


async def test_a_text_message_becomes_contact_conversation_and_message(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
) -> None:
    raw = wh.encode(_one_text("Hi there"))
    response = await post(client, None, raw=raw)
    assert response.status_code == 200
    (message,) = await _messages(db, org.id)
    assert (message.direction, message.type, message.text) == (
        MessageDirection.INBOUND,
        "text",
        "Hi there",
    )
    assert message.status == MessageStatus.RECEIVED
    async with db.session(org.id) as session:
        contact = (await session.exec(select(Contact))).one()
        conversation = (await session.exec(select(Conversation))).one()
    # Webhook events are the platform's: the app's role sees only the one a session names.
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        stored = (await session.exec(select(WebhookEvent))).one()
    assert (contact.wa_id, contact.name, contact.phone_number) == (
        wh.CUSTOMER_WA_ID,
        wh.CUSTOMER_NAME,
        "+" + wh.CUSTOMER_WA_ID,
    )
    assert conversation.account_id == channel.id
    assert conversation.unread_count == 1
    assert conversation.last_message_id == message.id
    assert conversation.last_inbound_at is not None
    assert stored.status == WebhookEventStatus.PROCESSED
    assert stored.body == raw  # kept exactly as received


async def test_redelivery_is_a_no_op(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
) -> None:
    body = _one_text()
    for _ in range(3):
        assert (await post(client, body)).status_code == 200
    assert len(await _messages(db, org.id)) == 1
    async with db.session(org.id) as session:
        conversation = (await session.exec(select(Conversation))).one()
    assert conversation.unread_count == 1
    assert await _count(owner_db, WebhookEvent) == 3  # every delivery is kept as received


async def test_an_unknown_number_is_stored_and_touches_nothing(
    client: httpx.AsyncClient, db: Database, owner_db: Database, channel: WhatsAppAccount
) -> None:
    body = wh.webhook_body(
        wh.messages_change("999999999999999", messages=[wh.text_message()], contacts=[wh.contact()])
    )
    assert (await post(client, body)).status_code == 200
    assert await _count(owner_db, Message) == 0
    assert await _count(owner_db, WebhookEvent) == 1


async def test_a_channel_url_never_writes_into_another_workspace(
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    org: Organization,
    other_org: Organization,
    channel: WhatsAppAccount,
) -> None:
    await _channel(
        db,
        settings,
        other_org,
        phone_number_id="106540352299999",
        key="other-key-000000000000000001",
    )
    body = wh.webhook_body(
        wh.messages_change("106540352299999", messages=[wh.text_message()], contacts=[wh.contact()])
    )
    keyed = f"/webhooks/whatsapp/{channel.webhook_key}"
    assert (await post(client, body, path=keyed, secret=CHANNEL_SECRET)).status_code == 200
    assert await _messages(db, other_org.id) == []
    assert await _messages(db, org.id) == []
    # through the platform URL the same body reaches its owner
    assert (await post(client, body)).status_code == 200
    assert len(await _messages(db, other_org.id)) == 1


async def test_a_body_that_cannot_be_understood_is_kept_and_answered_200(
    client: httpx.AsyncClient, owner_db: Database
) -> None:
    for raw in (b"not json", b'{"object":"page","entry":[]}', b"[1,2,3]"):
        assert (await post(client, None, raw=raw)).status_code == 200
    async with owner_db.session(all_workspaces="test: read events") as session:
        events = (await session.exec(select(WebhookEvent))).all()
    assert len(events) == 3
    assert all(e.status == WebhookEventStatus.PROCESSED for e in events)
    assert all(e.last_error for e in events)


async def test_non_ascii_bodies_verify_over_the_raw_bytes(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    body = _one_text("Olá, ação — 你好 👋")
    escaped = wh.encode(body)
    assert b"\\u" in escaped
    assert (await post(client, None, raw=escaped)).status_code == 200
    raw_utf8 = json.dumps(body, ensure_ascii=False).encode()  # the same message, unescaped
    assert b"\\u" not in raw_utf8
    assert (await post(client, None, raw=raw_utf8)).status_code == 200
    (message,) = await _messages(db, org.id)
    assert message.text == "Olá, ação — 你好 👋"


async def test_bsuid_senders_are_keyed_by_user_id(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    first = wh.webhook_body(
        wh.messages_change(
            messages=[wh.bsuid_text_message(body="one")],
            contacts=[wh.contact(wa_id=None, user_id=wh.CUSTOMER_USER_ID, username="@sheena")],
        )
    )
    second = wh.webhook_body(
        wh.messages_change(
            messages=[wh.text_message(body="two", user_id=wh.CUSTOMER_USER_ID)],
            contacts=[wh.contact(user_id=wh.CUSTOMER_USER_ID)],
        )
    )
    assert (await post(client, first)).status_code == 200
    assert (await post(client, second)).status_code == 200
    async with db.session(org.id) as session:
        (contact,) = (await session.exec(select(Contact))).all()
        (conversation,) = (await session.exec(select(Conversation))).all()
    assert contact.user_id == wh.CUSTOMER_USER_ID
    assert contact.wa_id == wh.CUSTOMER_WA_ID  # learnt from the second message
    assert conversation.unread_count == 2


async def test_every_message_shape_is_kept(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    messages = [
        wh.image_message(),
        wh.video_message(),
        wh.audio_message(),
        wh.document_message(),
        wh.sticker_message(),
        wh.location_message(),
        wh.contacts_message(),
        wh.button_reply_message(),
        wh.list_reply_message(),
        wh.template_button_message(),
        wh.reaction_message(wh.new_wamid()),
        wh.unreaction_message(wh.new_wamid()),
        wh.order_message(),
        wh.system_message(),
        wh.unsupported_message(),
        wh.message("brand_new_type", {"x": 1}),
    ]
    body = wh.webhook_body(wh.messages_change(messages=messages, contacts=[wh.contact()]))
    assert (await post(client, body)).status_code == 200
    stored = await _messages(db, org.id)
    assert len(stored) == len(messages) - 2  # reactions attach to their message instead
    kinds = {m.type for m in stored}
    assert "reaction" not in kinds
    assert {"image", "video", "audio", "document", "sticker", "location", "unsupported"} <= kinds
    image = next(m for m in stored if m.type == "image")
    assert image.media is not None
    assert {"id", "mime_type", "sha256"} <= set(image.media)
    unknown = [m for m in stored if m.payload and m.payload["raw"].get("type") == "brand_new_type"]
    assert len(unknown) == 1
    assert unknown[0].type == "unsupported"
    assert unknown[0].payload is not None
    assert unknown[0].payload["raw"]["brand_new_type"] == {"x": 1}


async def test_a_new_inbound_message_reopens_a_resolved_conversation(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    await post(client, _one_text("first"))
    async with db.session(org.id) as session:
        conversation = (await session.exec(select(Conversation))).one()
        conversation.status = ConversationStatus.RESOLVED
    await post(client, _one_text("again"))
    async with db.session(org.id) as session:
        (conversation,) = (await session.exec(select(Conversation))).all()
    assert conversation.status == ConversationStatus.OPEN
    assert conversation.unread_count == 2


async def test_stop_and_start_change_the_opt_out(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    await post(client, _one_text("  stop "))
    async with db.session(org.id) as session:
        assert (await session.exec(select(Contact))).one().opted_out is True
    await post(client, _one_text("START"))
    async with db.session(org.id) as session:
        assert (await session.exec(select(Contact))).one().opted_out is False


# --- statuses ---


async def _outbound(db: Database, org: Organization, *, wamid: str | None) -> Message:
    status = MessageStatus.SENT if wamid else MessageStatus.SENDING
    return await outbound_message(db, org.id, wamid, status)


async def test_statuses_only_move_forward_whatever_the_order(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    await post(client, _one_text())
    wamid = wh.new_wamid()
    message = await _outbound(db, org, wamid=wamid)
    for state in ("read", "delivered", "sent", "read"):
        body = wh.webhook_body(wh.messages_change(statuses=[wh.status(wamid, state)]))
        assert (await post(client, body)).status_code == 200
    assert (await stored_message(db, message)).status == MessageStatus.READ
    late_failure = wh.webhook_body(wh.messages_change(statuses=[wh.status(wamid, "failed")]))
    await post(client, late_failure)
    assert (await stored_message(db, message)).status == MessageStatus.READ


async def test_a_failed_status_keeps_metas_code_and_title(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    await post(client, _one_text())
    wamid = wh.new_wamid()
    message = await _outbound(db, org, wamid=wamid)
    body = wh.webhook_body(
        wh.messages_change(
            statuses=[
                wh.status(wamid, "failed", errors=[wh.error(131026, "Message undeliverable")])
            ]
        )
    )
    await post(client, body)
    failed = await stored_message(db, message)
    assert (failed.status, failed.error_code, failed.error_title) == (
        MessageStatus.FAILED,
        131026,
        "Message undeliverable",
    )


async def test_a_status_finds_its_message_by_callback_data_when_the_wamid_was_lost(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    await post(client, _one_text())
    message = await _outbound(db, org, wamid=None)  # the send response never arrived
    wamid = wh.new_wamid()
    body = wh.webhook_body(
        wh.messages_change(
            statuses=[wh.status(wamid, "delivered", biz_opaque_callback_data=str(message.id))]
        )
    )
    await post(client, body)
    found = await stored_message(db, message)
    assert found.wa_message_id == wamid
    assert found.status == MessageStatus.DELIVERED


# --- management fields ---


async def test_template_quality_and_account_updates_reach_the_account(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    body = wh.webhook_body(
        wh.template_status_change("REJECTED", reason="INVALID_FORMAT"),
        wh.quality_change(current_limit="TIER_10K"),
        wh.account_update_change(
            "ACCOUNT_RESTRICTION", restriction_types=["RESTRICTED_BIZ_INITIATED_MESSAGING"]
        ),
    )
    assert (await post(client, body)).status_code == 200
    async with db.session(org.id) as session:
        account = await session.get(WhatsAppAccount, channel.id)
        (template,) = (await session.exec(select(TemplateStatusEvent))).all()
    assert account is not None
    assert account.messaging_limit_tier == "TIER_10K"
    assert account.status == "RESTRICTED"
    assert "RESTRICTED_BIZ_INITIATED_MESSAGING" in (account.status_detail or "")
    assert (template.event, template.reason) == ("REJECTED", "INVALID_FORMAT")


async def test_a_template_status_webhook_updates_the_synced_template(
    client: httpx.AsyncClient, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    async with db.session(org.id) as session:
        session.add(
            MessageTemplate(
                org_id=org.id,
                account_id=channel.id,
                meta_template_id="1689556908129832",
                name="order_confirmation",
                language="en_US",
                status="APPROVED",
            )
        )
        row = await session.get(WhatsAppAccount, channel.id)
        assert row is not None
        row.templates_synced_at = utcnow()
    paused = wh.template_status_change("PAUSED", reason="LOW_QUALITY")
    unknown = wh.template_status_change("APPROVED", template_id=42, name="brand_new")
    assert (await post(client, wh.webhook_body(paused, unknown))).status_code == 200
    async with db.session(org.id) as session:
        (template,) = (await session.exec(select(MessageTemplate))).all()
        account = await session.get(WhatsAppAccount, channel.id)
    assert template.status == "PAUSED"
    assert account is not None
    assert account.templates_synced_at is None  # a template we do not know: sync it soon

    reinstated = wh.template_status_change("REINSTATED")
    assert (await post(client, wh.webhook_body(reinstated))).status_code == 200
    async with db.session(org.id) as session:
        (template,) = (await session.exec(select(MessageTemplate))).all()
    assert template.status == "APPROVED"


# --- throughput ---


async def test_statements_per_webhook_do_not_grow_with_its_messages(
    client: httpx.AsyncClient,
    app: Any,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
) -> None:
    engine = runtime_of(app).db.engine.sync_engine
    counts = []
    assert (await post(client, _one_text())).status_code == 200  # the routes, now cached
    for prefix, size in (("1650555", 10), ("1650777", 1000)):
        body = wh.webhook_body(
            wh.messages_change(
                messages=[
                    wh.text_message(from_wa_id=f"{prefix}{n:04d}", body=f"m{n}")
                    for n in range(size)
                ],
                contacts=[wh.contact(wa_id=f"{prefix}{n:04d}", name=f"C{n}") for n in range(size)],
            )
        )
        seen: list[str] = []

        def before(
            conn: Any, cursor: Any, statement: str, *args: Any, _seen: list[str] = seen
        ) -> None:
            _seen.append(statement)

        event.listen(engine, "before_cursor_execute", before)
        try:
            assert (await post(client, body)).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", before)
        counts.append(len(seen))
    assert counts[0] == counts[1], counts  # one transaction, constant statements
    assert len(await _messages(db, org.id)) == 1011
    async with db.session(org.id) as session:
        assert int((await session.exec(select(func.count()).select_from(Contact))).one()) == 1011


def _unstorable_text(case: str) -> dict[str, Any]:
    """A body whose strings hold what no database stores as text (a NUL; a lone surrogate,
    escaped as Meta would escape any character)."""
    if case == "nul in the text":
        return _one_text("a\x00b")
    if case == "nul in the profile name and the wamid":
        message = wh.text_message("wamid.\x00nul", body="ab")
        return wh.webhook_body(
            wh.messages_change(messages=[message], contacts=[wh.contact(name="Sheena\x00")])
        )
    return _one_text("a\ud800b")  # json.dumps escapes it as \ud800, alone


@pytest.mark.parametrize(
    "case",
    ["nul in the text", "nul in the profile name and the wamid", "a lone surrogate in the text"],
)
async def test_text_no_database_can_store_is_cleaned_and_the_message_kept(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    case: str,
) -> None:
    """Given a body with a NUL (PostgreSQL's text and jsonb refuse it) or a lone surrogate
    (neither driver encodes it),
    when it is delivered,
    then its message is stored on both engines, NULs dropped and a lone surrogate U+FFFD,
    and the event is processed: it failed at every retry, losing the message, before."""
    raw = wh.encode(_unstorable_text(case))
    assert (await post(client, None, raw=raw)).status_code == 200
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        stored = (await session.exec(select(WebhookEvent))).one()
    assert (stored.status, stored.last_error, stored.body) == (
        WebhookEventStatus.PROCESSED,
        None,
        raw,
    )
    (message,) = await _messages(db, org.id)
    assert message.text == ("a\ufffdb" if "surrogate" in case else "ab")
    assert "\x00" not in json.dumps(message.payload)
    if case == "nul in the profile name and the wamid":
        assert message.wa_message_id == "wamid.nul"
        async with db.session(org.id) as session:
            contact = (await session.exec(select(Contact))).one()
        assert contact.profile_name == "Sheena"
    # And a redelivery is still a no-op
    assert (await post(client, None, raw=raw)).status_code == 200
    assert len(await _messages(db, org.id)) == 1


@pytest.mark.parametrize("nesting", ["past the parser", "nul inside"])
async def test_a_body_nested_past_the_parsers_stack_is_kept_as_not_json(
    client: httpx.AsyncClient, db: Database, owner_db: Database, org: Organization, nesting: str
) -> None:
    """Given a signed body nested deeper than the JSON parser's stack (a RecursionError,
    not a ValueError),
    when it is delivered,
    then it is stored and processed as any body that is not JSON ("not JSON"), not failed
    at every retry until parked."""
    raw = b"[" * 200_000 + b"]" * 200_000
    if nesting == "nul inside":  # parsed, but deeper than a recursive clean-up follows
        raw = b"[" * 600 + b'"\\u0000"' + b"]" * 600
    assert (await post(client, None, raw=raw)).status_code == 200
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        stored = (await session.exec(select(WebhookEvent))).one()
    assert (stored.status, stored.last_error, stored.attempts) == (
        WebhookEventStatus.PROCESSED,
        "not JSON",
        1,
    )
    assert await _messages(db, org.id) == []


_LONG = "9" * 300


def _overlong(case: str) -> dict[str, Any]:
    """A message with one value longer than the column that stores it."""
    contacts = [wh.contact()]
    if case == "wamid":
        message = wh.text_message("wamid." + "A" * 300)
    elif case == "sender":
        message, contacts = wh.text_message(from_wa_id=_LONG), [wh.contact(wa_id=_LONG)]
    elif case == "sender of 33 digits":
        message, contacts = wh.text_message(from_wa_id="9" * 33), [wh.contact(wa_id="9" * 33)]
    elif case == "user id":
        user_id = "US." + _LONG
        message, contacts = wh.text_message(user_id=user_id), [wh.contact(user_id=user_id)]
    elif case == "username":
        message, contacts = wh.text_message(), [wh.contact(username="@" + "u" * 300)]
    elif case == "reply's wamid":
        message = wh.text_message(context={"from": "1", "id": "wamid." + "C" * 300})
    elif case == "reaction's wamid":
        message = wh.reaction_message("wamid." + "R" * 300)
    elif case == "media id":
        message = wh.image_message(media_id="M" * 300)
    elif case == "sha256":
        message = wh.image_message(sha256="S" * 300)
    elif case == "mime type":
        message = wh.image_message(mime_type="image/" + "p" * 300)
    else:
        message = wh.document_message(filename="f" * 400 + ".pdf")
    return wh.webhook_body(wh.messages_change(messages=[message], contacts=contacts))


@pytest.mark.parametrize(
    "case",
    [
        "wamid",
        "sender",
        "sender of 33 digits",
        "user id",
        "username",
        "reply's wamid",
        "reaction's wamid",
        "media id",
        "sha256",
        "mime type",
        "filename",
    ],
)
async def test_a_value_longer_than_its_column_does_not_fail_the_event(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    case: str,
) -> None:
    """Given a message with one value longer than the column that would store it (no id
    Meta gives is that long),
    when it is delivered,
    then the event is processed alike on both engines: an over-long id is treated as
    missing (a message without its id is kept as not understood), a file name is cut.
    PostgreSQL refused the value and failed the whole event at every retry; SQLite
    stored it whole."""
    assert (await post(client, _overlong(case))).status_code == 200
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        stored = (await session.exec(select(WebhookEvent))).one()
    assert stored.status == WebhookEventStatus.PROCESSED, stored.last_error
    messages = await _messages(db, org.id)
    if case == "wamid":
        assert (messages, stored.last_error) == ([], "1 part(s) not understood")
    elif case == "reaction's wamid":
        assert messages == []
    else:
        assert stored.last_error is None
        (message,) = messages
        assert message.reply_to_wa_message_id is None


# --- nothing lost ---


async def test_a_processing_failure_is_recorded_and_retried(
    client: httpx.AsyncClient,
    app: Any,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    original = process._process_share

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(process, "_process_share", broken)
    assert (await post(client, _one_text())).status_code == 200
    async with owner_db.session(all_workspaces="test") as session:
        stored = (await session.exec(select(WebhookEvent))).one()
    assert stored.status == WebhookEventStatus.FAILED
    assert (stored.last_error or "").startswith("RuntimeError at weflux/")
    assert "hiccup" not in (stored.last_error or "")  # a message may quote a customer
    assert await _messages(db, org.id) == []

    monkeypatch.setattr(process, "_process_share", original)
    async with owner_db.session(all_workspaces="test") as session:
        due = await session.get(WebhookEvent, stored.id)
        assert due is not None
        due.next_attempt_at = utcnow()
    runtime = runtime_of(app)
    assert await webhook_queue.retry_due_events(runtime.db, runtime.broker, runtime.settings) == 1
    assert len(await _messages(db, org.id)) == 1


async def test_replay_reprocesses_without_duplicates(
    client: httpx.AsyncClient,
    app: Any,
    db: Database,
    owner_db: Database,
    org: Organization,
    channel: WhatsAppAccount,
) -> None:

    await post(client, _one_text("a"))
    await post(client, _one_text("b"))
    runtime = runtime_of(app)
    assert await webhook_queue.replay(runtime.db, runtime.broker, runtime.settings, owner_db) == (
        2,
        0,
    )
    assert len(await _messages(db, org.id)) == 2


@postgres_only
async def test_503_when_the_event_cannot_be_stored_and_200_after(
    database_urls: DatabaseUrls, tmp_path: Path, db: Database, org: Organization, settings: Settings
) -> None:
    await _channel(db, settings, org)
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app(
        settings.model_copy(update={"database_url": proxied, "database_connect_timeout": 1.0})
    )
    try:
        async with lifespan(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://meta") as client:
                await proxy.cut()
                assert (await post(client, _one_text())).status_code == 503
                await proxy.restore()
                assert (await post(client, _one_text())).status_code == 200
    finally:
        await proxy.close()
    assert len(await _messages(db, org.id)) == 1


async def test_agents_never_see_webhook_events_through_graphql(
    client: httpx.AsyncClient, agent: Actor, channel: WhatsAppAccount
) -> None:

    await post(client, _one_text())
    token = await token_for(client, agent)
    response = await gql(client, token, '{ __type(name: "WebhookEvent") { name } }')
    assert response.json()["data"]["__type"] is None
