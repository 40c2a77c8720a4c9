"""Invitations that arrive (issue 17, item 4): listed, revoked, resent, emailed.

The platform's mail goes to a real SMTP server (aiosmtpd); the link in the email is
followed over HTTP. Attacked by every role and from another workspace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import ClientFactory, app_client
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.mail import mails_to
from tests.fixtures.settings import make_settings
from tests.fixtures.smtp import RecordingHandler, running_server
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import AuditEvent, Invitation
from weflux.services.audit import Action

APP_URL = "https://app.weflux.test"
SENDER = "team@weflux.example"
INVITEE = "new.hire@acme.example"
NEW_PASSWORD = "Lantern-quartz-Meadow-61"
LINK = re.compile(re.escape(APP_URL) + r"/invitations/accept#token=([A-Za-z0-9_-]+)")

INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { invitation { id email role } token } }"""
INVITATIONS = "{ invitations { id email name role invitedBy { id role } } }"
REVOKE = "mutation ($id: ID!) { revokeInvitation(id: $id) }"
RESEND = "mutation ($id: ID!) { resendInvitation(id: $id) { id email role expiresAt } }"


@pytest.fixture
def mail_server() -> Iterator[RecordingHandler]:
    with running_server() as (handler, port):
        handler.port = port  # type: ignore[attr-defined]
        yield handler


@pytest.fixture
def settings(
    database_urls: DatabaseUrls, tmp_path: Path, mail_server: RecordingHandler
) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        smtp_url=f"smtp://127.0.0.1:{mail_server.port}",  # type: ignore[attr-defined]
        smtp_from=SENDER,
        app_url=APP_URL,
        rate_limit_invitation_resend="2/hour",
    )


def mails(server: RecordingHandler, to: str = INVITEE) -> list[EmailMessage]:
    found = []
    for delivered in server.delivered:
        message = message_from_bytes(delivered.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        if str(message["To"]).lower() == to:
            found.append(message)
    return found


def link_token(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    match = LINK.search(str(part.get_content()))
    assert match is not None, part.get_content()
    return match.group(1)


def data_of(response: httpx.Response, field: str) -> Any:
    body = response.json()
    assert "errors" not in body, response.text
    return body["data"][field]


async def invite(
    client: httpx.AsyncClient, token: str, role: str = "AGENT", email: str = INVITEE
) -> httpx.Response:
    variables = {"input": {"email": email, "name": "New Hire", "role": role}}
    return await gql(client, token, INVITE, variables)


async def accept(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/auth/invitations/accept",
        json={"token": token, "name": "New Hire", "password": NEW_PASSWORD},
    )


async def actions(db: Database, actor: Actor, action: Action) -> list[AuditEvent]:
    async with db.session(actor.org_id) as session:
        return list(await session.exec(select(AuditEvent).where(AuditEvent.action == action)))


async def test_the_invitation_email_arrives_with_a_link_that_works(
    client: httpx.AsyncClient,
    admin: Actor,
    mail_server: RecordingHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given an Admin's invitation, then the invitee gets an email from the platform's
    sender with the accept link to WEFLUX_APP_URL; accepting its token over HTTP joins the
    workspace, and the token is in no log line."""
    token = await token_for(client, admin)
    with caplog.at_level(logging.DEBUG):
        payload = data_of(await invite(client, token), "inviteMember")

    [message] = mails(mail_server)
    assert SENDER in str(message["From"])
    assert "Acme" in str(message["Subject"])
    secret = link_token(message)
    assert secret == payload["token"]
    assert secret not in caplog.text
    listed = data_of(await gql(client, token, INVITATIONS), "invitations")
    assert [i["email"] for i in listed] == [INVITEE]

    joined = await accept(client, secret)

    assert joined.status_code == 200, joined.text
    assert joined.json()["member"]["role"] == "AGENT"
    assert data_of(await gql(client, token, INVITATIONS), "invitations") == []


async def test_revoking_answers_the_id_and_kills_the_link(
    client: httpx.AsyncClient, db: Database, admin: Actor, mail_server: RecordingHandler
) -> None:
    token = await token_for(client, admin)
    invitation_id = data_of(await invite(client, token), "inviteMember")["invitation"]["id"]
    secret = link_token(mails(mail_server)[0])

    revoked = await gql(client, token, REVOKE, {"id": invitation_id})

    assert data_of(revoked, "revokeInvitation") == invitation_id
    assert data_of(await gql(client, token, INVITATIONS), "invitations") == []
    dead = await accept(client, secret)
    assert dead.status_code == 404
    assert dead.json()["error"]["code"] == "NOT_FOUND"
    assert len(await actions(db, admin, Action.INVITATION_REVOKED)) == 1
    again = await gql(client, token, REVOKE, {"id": invitation_id})
    assert error_codes(again) == ["NOT_FOUND"]


async def test_resending_rotates_the_token_and_is_rate_limited(
    client: httpx.AsyncClient, db: Database, admin: Actor, mail_server: RecordingHandler
) -> None:
    """Given a sent invitation, when it is resent, then a second email carries a new
    link, the old link is dead and the new one works; past the limit, RATE_LIMITED."""
    token = await token_for(client, admin)
    invitation_id = data_of(await invite(client, token), "inviteMember")["invitation"]["id"]
    old = link_token(mails(mail_server)[0])

    resent = data_of(await gql(client, token, RESEND, {"id": invitation_id}), "resendInvitation")

    assert resent["id"] == invitation_id
    _, second = mails(mail_server)
    new = link_token(second)
    assert new != old
    assert (await accept(client, old)).status_code == 404
    assert len(await actions(db, admin, Action.INVITATION_RESENT)) == 1
    assert data_of(await gql(client, token, RESEND, {"id": invitation_id}), "resendInvitation")
    limited = await gql(client, token, RESEND, {"id": invitation_id})
    assert error_codes(limited) == ["RATE_LIMITED"]
    assert len(mails(mail_server)) == 3
    newest = link_token(mails(mail_server)[-1])
    assert (await accept(client, newest)).status_code == 200


async def test_a_manager_cannot_replace_revoke_or_resend_an_admins_invitation(
    client: httpx.AsyncClient, db: Database, admin: Actor, manager: Actor
) -> None:
    """Given an Admin's pending ADMIN invitation, when a Manager re-invites the same email
    as AGENT, then CONFLICT and the Admin's invitation stays; revoking or resending it
    answers FORBIDDEN. The Manager still sees it, and manages their own."""
    admin_token = await token_for(client, admin)
    manager_token = await token_for(client, manager)
    admins = data_of(await invite(client, admin_token, "ADMIN"), "inviteMember")
    admins_id = admins["invitation"]["id"]

    replaced = await invite(client, manager_token, "AGENT")
    revoked = await gql(client, manager_token, REVOKE, {"id": admins_id})
    resent = await gql(client, manager_token, RESEND, {"id": admins_id})

    assert error_codes(replaced) == ["CONFLICT"]
    assert error_codes(revoked) == ["FORBIDDEN"]
    assert error_codes(resent) == ["FORBIDDEN"]
    listed = data_of(await gql(client, manager_token, INVITATIONS), "invitations")
    assert [(i["id"], i["role"]) for i in listed] == [(admins_id, "ADMIN")]
    assert listed[0]["invitedBy"] == {
        "id": encode_global_id("Member", admin.membership.id),
        "role": "ADMIN",
    }
    async with db.session(admin.org_id) as session:
        [row] = (await session.exec(select(Invitation))).all()
    assert row.role.value == "ADMIN"
    assert (await accept(client, admins["token"])).json()["member"]["role"] == "ADMIN"

    # A Manager's own AGENT invitation: replaced by the Manager, revoked by the Manager.
    other = "second.hire@acme.example"
    first = data_of(await invite(client, manager_token, email=other), "inviteMember")
    second = data_of(await invite(client, manager_token, email=other), "inviteMember")
    assert (await accept(client, first["token"])).status_code == 404
    own = await gql(client, manager_token, REVOKE, {"id": second["invitation"]["id"]})
    assert data_of(own, "revokeInvitation") == second["invitation"]["id"]


async def test_an_admin_replaces_a_managers_invitation(
    client: httpx.AsyncClient, admin: Actor, manager: Actor
) -> None:
    manager_token = await token_for(client, manager)
    admin_token = await token_for(client, admin)
    managers = data_of(await invite(client, manager_token), "inviteMember")

    admins = data_of(await invite(client, admin_token, "MANAGER"), "inviteMember")

    assert (await accept(client, managers["token"])).status_code == 404
    listed = data_of(await gql(client, admin_token, INVITATIONS), "invitations")
    assert [(i["id"], i["role"]) for i in listed] == [(admins["invitation"]["id"], "MANAGER")]


async def test_agents_are_forbidden(
    client: httpx.AsyncClient, admin: Actor, agent: Actor, mail_server: RecordingHandler
) -> None:
    invitation_id = data_of(await invite(client, await token_for(client, admin)), "inviteMember")[
        "invitation"
    ]["id"]
    token = await token_for(client, agent)

    for query, variables in (
        (INVITATIONS, None),
        (REVOKE, {"id": invitation_id}),
        (RESEND, {"id": invitation_id}),
    ):
        assert error_codes(await gql(client, token, query, variables)) == ["FORBIDDEN"]
    assert len(mails(mail_server)) == 1


async def test_another_workspace_sees_nothing(
    client: httpx.AsyncClient, admin: Actor, other_admin: Actor, mail_server: RecordingHandler
) -> None:
    """Given an invitation of Acme, an Admin of Globex can neither list, revoke nor
    resend it (NOT_FOUND, as if it did not exist), and its link still works."""
    payload = data_of(await invite(client, await token_for(client, admin)), "inviteMember")
    invitation_id = payload["invitation"]["id"]
    token = await token_for(client, other_admin)

    assert data_of(await gql(client, token, INVITATIONS), "invitations") == []
    assert error_codes(await gql(client, token, REVOKE, {"id": invitation_id})) == ["NOT_FOUND"]
    assert error_codes(await gql(client, token, RESEND, {"id": invitation_id})) == ["NOT_FOUND"]
    unknown = encode_global_id("Invitation", admin.membership.id)
    assert error_codes(await gql(client, token, REVOKE, {"id": unknown})) == ["NOT_FOUND"]
    assert len(mails(mail_server)) == 1
    assert (await accept(client, payload["token"])).status_code == 200


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_without_an_smtp_url_the_invitation_is_written_to_the_outbox(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Given no WEFLUX_SMTP_URL (development), the invitation is an .eml file in the
    outbox, with the same link."""
    outbox_settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        app_url=APP_URL,
    )
    async with app_client(outbox_settings) as client:
        payload = data_of(await invite(client, await token_for(client, admin)), "inviteMember")

    [message] = mails_to(outbox_settings, INVITEE)
    assert link_token(message) == payload["token"]


def _aliased_invites(count: int) -> str:
    fields = " ".join(
        f'i{n}: inviteMember(input: {{email: "hire{n}@acme.example", name: "Hire", '
        f"role: AGENT}}) {{ token }}"
        for n in range(count)
    )
    return f"mutation {{ {fields} }}"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_invitation_emails_are_limited_per_workspace_aliases_too(
    make_client: ClientFactory, admin: Actor
) -> None:
    """Given a workspace limit of 2 invitation emails an hour
    When one request invites 3 people under aliases, then 1 person twice
    Then the third alias is RATE_LIMITED (nothing of that request stays), and so is a
    later invitation once 2 were sent: the platform's mailer is no workspace's to spam."""
    async with make_client(rate_limit_invitation_workspace="2/hour") as client:
        token = await token_for(client, admin)
        aliased = await gql(client, token, _aliased_invites(3))
        assert error_codes(aliased) == ["RATE_LIMITED"]
        assert aliased.json()["errors"][0]["path"] == ["i2"]
        # The two counted above are spent: the hour's limit is reached.
        refused = await invite(client, token, email="late.hire@acme.example")

    assert error_codes(refused) == ["RATE_LIMITED"]


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_invitation_emails_to_one_address_are_limited_per_workspace(
    make_client: ClientFactory, admin: Actor, other_admin: Actor
) -> None:
    """Given a limit of 3 invitation emails an hour to one address from one workspace
    When a workspace invites, resends to and re-invites the same address
    Then its fourth email is RATE_LIMITED (re-inviting is no way around the resend
    limit), while another workspace's invitation to that address is not: no workspace
    can spend the address's limit to block another's invitation."""
    async with make_client(rate_limit_invitation_email="3/hour") as client:
        token = await token_for(client, admin)
        other = await token_for(client, other_admin)
        first = data_of(await invite(client, token), "inviteMember")
        resent = await gql(client, token, RESEND, {"id": first["invitation"]["id"]})
        data_of(resent, "resendInvitation")
        data_of(await invite(client, token), "inviteMember")
        again = await invite(client, token)
        elsewhere = await invite(client, other)

    assert error_codes(again) == ["RATE_LIMITED"]
    assert error_codes(elsewhere) == []
