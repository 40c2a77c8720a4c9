"""Queueing outbound messages: the request's own transaction writes the outbox row."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from tests.fixtures.factories import (
    Actor,
)
from tests.fixtures.meta import OTHER_ACCESS_TOKEN, OTHER_PHONE_NUMBER_ID
from tests.fixtures.outbound import (
    Scene,
    all_messages,
    load_message,
    make_account,
    make_conversation,
)
from tests.fixtures.principals import principal_of
from tests.fixtures.settings import make_settings
from weflux.auth.scoping import restrict_to_agent
from weflux.config import Settings
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
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    utcnow,
)
from weflux.realtime.broker import Message as Event
from weflux.sandbox.cloud_api import FakeCloudApi
from weflux.services.channels import Services
from weflux.services.outbound import (
    opt_change,
    send_message,
    send_template_message,
    template_payload,
)
from weflux.worker.delivery import deliver_due_messages

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
