"""Queueing outbound messages: the request's own transaction writes the outbox row."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from tests.conftest import make_settings
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import (
    Actor,
    create_contact,
    create_conversation,
    create_whatsapp_account,
)
from tests.fixtures.meta import ACCESS_TOKEN, PHONE_NUMBER_ID
from weflux.auth.principal import Principal
from weflux.auth.scoping import restrict_to_agent
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.errors import (
    BadUserInput,
    Conflict,
    ContactOptedOut,
    NotFound,
    OutsideServiceWindow,
    WefluxError,
)
from weflux.models import (
    Contact,
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.broker import InProcessBroker
from weflux.realtime.broker import Message as Event
from weflux.realtime.events import workspace_channel
from weflux.services.channels import Services
from weflux.services.outbound import (
    opt_change,
    send_message,
    send_template_message,
    template_payload,
)
from weflux.whatsapp.client import CloudApiClient
from weflux.whatsapp.fake_cloud_api import FakeCloudApi
from weflux.worker.delivery import deliver_due_messages

CUSTOMER_WA_ID = "16505551234"

# -- set-up shared with test_delivery.py ----------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One conversation of a workspace, with its number and its contact."""

    org_id: uuid.UUID
    account: WhatsAppAccount
    contact: Contact
    conversation: Conversation


def outbound_settings(
    database_urls: DatabaseUrls, tmp_path: Path, meta_url: str, **overrides: Any
) -> Settings:
    """Settings of the test's database, pointing at the fake Cloud API."""
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
        **overrides,
    )


@asynccontextmanager
async def outbound_services(settings: Settings) -> AsyncIterator[Services]:
    """What the worker runs with: the key ring, a Cloud API client, an in-process broker."""
    cloud = CloudApiClient.from_settings(settings)
    try:
        yield Services(
            keyring=KeyRing.from_settings(settings), cloud=cloud, broker=InProcessBroker()
        )
    finally:
        await cloud.aclose()


async def record_events(services: Services, org_id: uuid.UUID) -> list[Event]:
    """Every event published from now on on the workspace's channel."""
    received: list[Event] = []

    async def listen(message: Event) -> None:
        received.append({k: v for k, v in message.items() if k != "eid"})

    await services.broker.subscribe(workspace_channel(org_id), listen)
    return received


@pytest.fixture
def inbox_settings(database_urls: DatabaseUrls, tmp_path: Path, meta_url: str) -> Settings:
    return outbound_settings(database_urls, tmp_path, meta_url)


@pytest.fixture
async def services(inbox_settings: Settings) -> AsyncIterator[Services]:
    async with outbound_services(inbox_settings) as built:
        yield built


@pytest.fixture
async def events(services: Services, admin: Actor) -> list[Event]:
    return await record_events(services, admin.org_id)


def principal_of(actor: Actor) -> Principal:
    return Principal(
        user_id=actor.user.id,
        org_id=actor.org_id,
        session_id=uuid.uuid4(),
        membership_id=actor.membership.id,
        role=actor.membership.role,
        token_expires_at=utcnow() + timedelta(hours=1),
    )


async def make_account(
    db: Database,
    keyring: KeyRing,
    org_id: uuid.UUID,
    *,
    phone_number_id: str = PHONE_NUMBER_ID,
    token: str | None = ACCESS_TOKEN,
    **overrides: Any,
) -> WhatsAppAccount:
    """A connected number whose access token is sealed like the real thing."""
    async with db.session(org_id) as session:
        account = await create_whatsapp_account(
            session, phone_number_id=phone_number_id, **overrides
        )
        seal(keyring, account, "access_token_enc", token)
    return account


_NOW = object()


async def make_conversation(
    db: Database,
    account: WhatsAppAccount,
    *,
    last_inbound_at: Any = _NOW,
    assignee_membership_id: uuid.UUID | None = None,
    **contact: Any,
) -> Scene:
    """A contact and their conversation with `account`; by default they wrote a minute ago."""
    if last_inbound_at is _NOW:
        last_inbound_at = utcnow() - timedelta(minutes=1)
    async with db.session(account.org_id) as session:
        person = await create_contact(session, **contact)
        conversation = await create_conversation(
            session,
            contact=person,
            account=account,
            last_inbound_at=last_inbound_at,
            last_message_at=last_inbound_at,
            assignee_membership_id=assignee_membership_id,
        )
    return Scene(account.org_id, account, person, conversation)


async def default_scene(db: Database, services: Services, org_id: uuid.UUID) -> Scene:
    """The test number (its real token sealed) and a customer who wrote a minute ago."""
    account = await make_account(db, services.keyring, org_id)
    return await make_conversation(db, account, wa_id=CUSTOMER_WA_ID)


@pytest.fixture
async def scene(db: Database, services: Services, admin: Actor) -> Scene:
    return await default_scene(db, services, admin.org_id)


async def load_message(db: Database, message_id: uuid.UUID, org_id: uuid.UUID) -> Message:
    async with db.session(org_id) as session:
        message = await session.get(Message, message_id)
    assert message is not None
    return message


async def all_messages(db: Database, org_id: uuid.UUID) -> list[Message]:
    async with db.session(org_id) as session:
        return list((await session.exec(select(Message))).all())


async def update_message(db: Database, message: Message, **values: Any) -> None:
    """Change a message's columns directly (the tests' time machine)."""
    async with db.session(message.org_id) as session:
        row = await session.get(Message, message.id)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)


async def queue_text(
    db: Database, services: Services, actor: Actor, scene: Scene, text: str = "Hello 👋", **kw: Any
) -> Message:
    """Queue a reply as `actor` through the service, committed."""
    async with db.session(actor.org_id) as session:
        return await send_message(
            session,
            principal_of(actor),
            services.broker,
            conversation_id=scene.conversation.id,
            text=text,
            client_message_id=kw.get("client_message_id"),
        )


# -- sending ----------------------------------------------------------------------------------


class _Rollback(Exception):
    pass


async def test_a_reply_is_queued_in_the_request_transaction(
    db: Database, services: Services, admin: Actor, scene: Scene, events: list[Event]
) -> None:
    before = utcnow()
    async with db.session(admin.org_id) as session:
        message = await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="Your order ships today 📦",
            client_message_id=None,
        )
        assert events == []  # nothing is announced before the commit

    stored = await load_message(db, message.id, admin.org_id)
    assert stored.status == MessageStatus.QUEUED
    assert stored.direction == MessageDirection.OUTBOUND
    assert stored.type == "text"
    assert stored.text == "Your order ships today 📦"
    assert stored.sent_by_membership_id == admin.membership.id
    assert stored.attempts == 0
    assert stored.next_attempt_at is not None
    assert before <= stored.next_attempt_at <= utcnow()
    assert stored.wa_message_id is None
    async with db.session(admin.org_id) as session:
        conversation = await session.get(Conversation, scene.conversation.id)
    assert conversation is not None
    assert conversation.last_message_id == message.id
    assert conversation.last_message_at == stored.created_at
    assert events == [
        {
            "event": "messageAdded",
            "id": str(message.id),
            "conversation_id": str(scene.conversation.id),
        },
        {"event": "conversationUpdated", "id": str(scene.conversation.id)},
    ]


async def test_a_rolled_back_request_leaves_no_message_and_no_event(
    db: Database, services: Services, admin: Actor, scene: Scene, events: list[Event]
) -> None:
    async def send_then_fail() -> None:
        async with db.session(admin.org_id) as session:
            await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                text="never sent",
                client_message_id="retry-me",
            )
            raise _Rollback

    with pytest.raises(_Rollback):
        await send_then_fail()
    assert await all_messages(db, admin.org_id) == []
    assert events == []
    async with db.session(admin.org_id) as session:
        conversation = await session.get(Conversation, scene.conversation.id)
    assert conversation is not None
    assert conversation.last_message_id is None


async def test_a_client_message_id_makes_a_retried_send_idempotent(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    ids = []
    for _ in range(2):
        async with db.session(admin.org_id) as session:
            message = await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                text="Hello again",
                client_message_id="c0ffee-1",
            )
            ids.append(message.id)
    assert ids[0] == ids[1]
    assert len(await all_messages(db, admin.org_id)) == 1

    assert await deliver_due_messages(db, services, inbox_settings) == 1
    assert await deliver_due_messages(db, services, inbox_settings) == 0
    assert len(fake_meta.sent) == 1

    # The same id once more, after delivery: still that message, still one send.
    async with db.session(admin.org_id) as session:
        again = await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="Hello again",
            client_message_id="c0ffee-1",
        )
    assert again.id == ids[0]
    assert again.status == MessageStatus.SENT
    assert await deliver_due_messages(db, services, inbox_settings) == 0
    assert len(fake_meta.sent) == 1


async def test_a_client_message_id_of_another_conversation_conflicts(
    db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    other = await make_conversation(db, scene.account)
    async with db.session(admin.org_id) as session:
        await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="first",
            client_message_id="shared-id",
        )
    with pytest.raises(Conflict):
        async with db.session(admin.org_id) as session:
            await send_template_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=other.conversation.id,
                template_name="hello_world",
                language_code="en_US",
                body_parameters=[],
                client_message_id="shared-id",
            )
    assert len(await all_messages(db, admin.org_id)) == 1


async def test_the_same_client_message_id_may_be_used_in_another_workspace(
    db: Database, services: Services, admin: Actor, other_admin: Actor, scene: Scene
) -> None:
    from tests.fixtures.meta import OTHER_ACCESS_TOKEN, OTHER_PHONE_NUMBER_ID

    theirs = await make_conversation(
        db,
        await make_account(
            db,
            services.keyring,
            other_admin.org_id,
            phone_number_id=OTHER_PHONE_NUMBER_ID,
            token=OTHER_ACCESS_TOKEN,
        ),
    )
    for actor, conversation in ((admin, scene.conversation), (other_admin, theirs.conversation)):
        async with db.session(actor.org_id) as session:
            await send_message(
                session,
                principal_of(actor),
                services.broker,
                conversation_id=conversation.id,
                text="hi",
                client_message_id="same-everywhere",
            )
    assert len(await all_messages(db, admin.org_id)) == 1
    assert len(await all_messages(db, other_admin.org_id)) == 1


@pytest.mark.parametrize("last_inbound", [None, timedelta(hours=24, seconds=1), timedelta(days=3)])
async def test_outside_the_service_window_only_a_template_may_be_sent(
    db: Database,
    services: Services,
    admin: Actor,
    last_inbound: timedelta | None,
) -> None:
    account = await make_account(db, services.keyring, admin.org_id)
    closed = await make_conversation(
        db,
        account,
        last_inbound_at=None if last_inbound is None else utcnow() - last_inbound,
    )
    with pytest.raises(OutsideServiceWindow) as raised:
        async with db.session(admin.org_id) as session:
            await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=closed.conversation.id,
                text="Are you there?",
                client_message_id=None,
            )
    assert raised.value.graphql_code == "OUTSIDE_SERVICE_WINDOW"
    assert "template" in raised.value.message

    async with db.session(admin.org_id) as session:
        template = await send_template_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=closed.conversation.id,
            template_name="order_update",
            language_code="en_US",
            body_parameters=["Sheena", "#1042"],
        )
    stored = await load_message(db, template.id, admin.org_id)
    assert stored.status == MessageStatus.QUEUED
    assert stored.type == "template"
    assert stored.payload == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Sheena"},
                    {"type": "text", "text": "#1042"},
                ],
            }
        ],
    }
    assert stored.text == "Template order_update (en_US): Sheena, #1042"


async def test_a_reply_just_inside_the_window_is_queued(
    db: Database, services: Services, admin: Actor
) -> None:
    account = await make_account(db, services.keyring, admin.org_id)
    scene = await make_conversation(
        db, account, last_inbound_at=utcnow() - timedelta(hours=23, minutes=59)
    )
    async with db.session(admin.org_id) as session:
        message = await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="just in time",
            client_message_id=None,
        )
    assert message.status == MessageStatus.QUEUED


async def test_an_opted_out_contact_gets_neither_replies_nor_templates(
    db: Database, services: Services, admin: Actor
) -> None:
    account = await make_account(db, services.keyring, admin.org_id)
    scene = await make_conversation(db, account, opted_out=True)
    with pytest.raises(ContactOptedOut) as raised:
        async with db.session(admin.org_id) as session:
            await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                text="hi",
                client_message_id=None,
            )
    assert raised.value.graphql_code == "CONTACT_OPTED_OUT"
    assert "opted out" in raised.value.message
    with pytest.raises(ContactOptedOut):
        async with db.session(admin.org_id) as session:
            await send_template_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                template_name="hello_world",
                language_code="en_US",
                body_parameters=[],
            )
    assert await all_messages(db, admin.org_id) == []


async def test_conversations_the_caller_cannot_see_are_not_found(
    db: Database,
    services: Services,
    admin: Actor,
    agent: Actor,
    manager: Actor,
    other_admin: Actor,
    scene: Scene,
) -> None:
    from tests.fixtures.meta import OTHER_ACCESS_TOKEN, OTHER_PHONE_NUMBER_ID

    theirs = await make_conversation(
        db,
        await make_account(
            db,
            services.keyring,
            other_admin.org_id,
            phone_number_id=OTHER_PHONE_NUMBER_ID,
            token=OTHER_ACCESS_TOKEN,
        ),
    )
    assigned_to_manager = await make_conversation(
        db, scene.account, assignee_membership_id=manager.membership.id
    )
    cases = [
        (admin, theirs.conversation.id, False),  # another workspace
        (admin, uuid.uuid4(), False),  # nothing at all
        (agent, assigned_to_manager.conversation.id, True),  # a colleague's conversation
    ]

    async def attempt(
        actor: Actor, conversation_id: uuid.UUID, as_agent: bool, template: bool
    ) -> None:
        async with db.session(actor.org_id) as session:
            if as_agent:
                restrict_to_agent(session, actor.membership.id)
            if template:
                await send_template_message(
                    session,
                    principal_of(actor),
                    services.broker,
                    conversation_id=conversation_id,
                    template_name="hello_world",
                    language_code="en_US",
                    body_parameters=[],
                )
            else:
                await send_message(
                    session,
                    principal_of(actor),
                    services.broker,
                    conversation_id=conversation_id,
                    text="hi",
                    client_message_id=None,
                )

    for actor, conversation_id, as_agent in cases:
        for template in (False, True):
            with pytest.raises(NotFound) as raised:
                await attempt(actor, conversation_id, as_agent, template)
            assert raised.value.graphql_code == "NOT_FOUND"
    assert await all_messages(db, admin.org_id) == []
    assert await all_messages(db, other_admin.org_id) == []

    # The agent may reply in an unassigned conversation.
    async with db.session(agent.org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        message = await send_message(
            session,
            principal_of(agent),
            services.broker,
            conversation_id=scene.conversation.id,
            text="Happy to help",
            client_message_id=None,
        )
    assert message.sent_by_membership_id == agent.membership.id


async def test_a_disconnected_number_refuses_replies(
    db: Database, services: Services, admin: Actor
) -> None:
    account = await make_account(db, services.keyring, admin.org_id, disconnected_at=utcnow())
    scene = await make_conversation(db, account)
    with pytest.raises(Conflict):
        async with db.session(admin.org_id) as session:
            await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                text="hi",
                client_message_id=None,
            )


@pytest.mark.parametrize(
    ("text", "client_message_id"),
    [
        ("", None),
        ("   \n ", None),
        ("x" * 4097, None),
        ("bell\x07", None),
        ("nul\x00", None),
        ("fine", ""),
        ("fine", "x" * 129),
        ("fine", " padded "),
    ],
)
async def test_bad_input_is_refused(
    db: Database,
    services: Services,
    admin: Actor,
    scene: Scene,
    text: str,
    client_message_id: str | None,
) -> None:
    with pytest.raises(BadUserInput) as raised:
        async with db.session(admin.org_id) as session:
            await send_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                text=text,
                client_message_id=client_message_id,
            )
    assert raised.value.graphql_code == "BAD_USER_INPUT"
    assert await all_messages(db, admin.org_id) == []


async def test_limits_are_inclusive(
    db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    async with db.session(admin.org_id) as session:
        message = await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="y" * 4096,
            client_message_id="z" * 128,
        )
    assert len((await load_message(db, message.id, admin.org_id)).text or "") == 4096


@pytest.mark.parametrize(
    ("name", "language", "parameters"),
    [
        ("Hello World", "en_US", []),
        ("", "en_US", []),
        ("hello_world", "english please", []),
        ("hello_world", "en_US", [""]),
        ("hello_world", "en_US", ["two\nlines"]),
        ("hello_world", "en_US", ["wide     gap"]),
        ("hello_world", "en_US", ["x"] * 101),
    ],
)
async def test_bad_templates_are_refused(
    db: Database,
    services: Services,
    admin: Actor,
    scene: Scene,
    name: str,
    language: str,
    parameters: list[str],
) -> None:
    with pytest.raises(BadUserInput):
        async with db.session(admin.org_id) as session:
            await send_template_message(
                session,
                principal_of(admin),
                services.broker,
                conversation_id=scene.conversation.id,
                template_name=name,
                language_code=language,
                body_parameters=parameters,
            )


async def test_errors_are_coded_for_graphql() -> None:
    assert issubclass(OutsideServiceWindow, WefluxError)
    assert ContactOptedOut.graphql_code == "CONTACT_OPTED_OUT"


def test_template_payload_without_parameters_keeps_an_empty_body() -> None:
    assert template_payload("hello_world", "en", [])["components"] == [
        {"type": "body", "parameters": []}
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", True),
        ("stop", True),
        ("  Stop \n", True),
        ("UNSUBSCRIBE", True),
        ("START", False),
        ("start", False),
        (" Subscribe ", False),
        ("please stop", None),
        ("STOP!", None),
        ("stopp", None),
        ("", None),
        (None, None),
    ],
)
def test_opt_change_matches_whole_keywords(
    tmp_path: Path, text: str | None, expected: bool | None
) -> None:
    settings = _plain_settings(tmp_path)
    assert opt_change(text, settings) is expected


def test_opt_keywords_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFLUX_OPT_OUT_KEYWORDS", "BAJA, Stop all")
    monkeypatch.setenv("WEFLUX_OPT_IN_KEYWORDS", "ALTA")
    settings = _plain_settings(tmp_path)
    assert settings.opt_out_keywords == ["BAJA", "Stop all"]
    assert opt_change("baja", settings) is True
    assert opt_change("STOP ALL", settings) is True
    assert opt_change("stop", settings) is None
    assert opt_change("Alta", settings) is False


def _plain_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


async def test_every_queued_row_is_an_outbound_outbox_entry(
    db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    async with db.session(admin.org_id) as session:
        await send_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            text="one",
            client_message_id=None,
        )
        await send_template_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=scene.conversation.id,
            template_name="hello_world",
            language_code="en_US",
            body_parameters=[],
        )
    async with db.session(admin.org_id) as session:
        rows = (await session.exec(select(Message).order_by(Message.id))).all()  # type: ignore[arg-type]
    assert [(m.type, m.status, m.direction) for m in rows] == [
        ("text", MessageStatus.QUEUED, MessageDirection.OUTBOUND),
        ("template", MessageStatus.QUEUED, MessageDirection.OUTBOUND),
    ]
