"""Alerts (issue 13, item 3): HIGH and CRITICAL events mailed to the workspace's Admins
through the platform's SMTP and posted, signed, to the on-call's webhook; a new device
mailed to its user; de-duplicated, limited, and retried until sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.app import client_of
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor, create_actor
from tests.fixtures.live import free_port
from tests.fixtures.secops import (
    ALERT_SECRET,
    AlertReceiver,
    alerts,
    fresh_email,
    fresh_ip,
    running_receiver,
    secops_app,
)
from tests.fixtures.smtp import RecordingHandler, running_server
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import AlertStatus, Organization, Role, SecurityAlert, utcnow
from weflux.runtime import runtime_of
from weflux.secops.alerts import SIGNATURE_HEADER, send_due_alerts, signature_valid
from weflux.secops.events import SecurityKind, record_platform_event, record_security_event
from weflux.services.audit import RequestMeta

SENDER = "security@example.com"


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingHandler, int]]:
    with running_server() as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
async def app(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    smtp: tuple[RecordingHandler, int],
    receiver: AlertReceiver,
) -> AsyncIterator[Starlette]:
    async with secops_app(
        database_urls,
        tmp_path,
        "memory",
        smtp_url=f"smtp://127.0.0.1:{smtp[1]}",
        smtp_from=SENDER,
        security_alert_url=receiver.url,
        security_alert_secret=ALERT_SECRET,
    ) as application:
        yield application


async def sweep(app: Starlette) -> int:
    runtime = runtime_of(app)
    return await send_due_alerts(runtime.db, runtime.settings, runtime.mailer)


async def raise_event(app: Starlette, org: Organization, kind: SecurityKind) -> None:
    runtime = runtime_of(app)
    async with runtime.db.session(org.id) as session:
        await record_security_event(
            session, runtime.broker, kind, "Something happened", meta=RequestMeta(ip="192.0.2.9")
        )


async def test_a_high_event_is_mailed_to_every_admin_and_posted_signed(
    app: Starlette,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
    smtp: tuple[RecordingHandler, int],
    receiver: AlertReceiver,
) -> None:
    """Given a workspace with two Admins and an Agent
    When a HIGH event is raised and the worker sweeps
    Then each Admin (not the Agent) gets one mail, and the webhook one POST whose signature
    verifies with the shared secret."""
    async with db.session(org.id) as session:
        second = await create_actor(session, Role.ADMIN, email=fresh_email())
    await raise_event(app, org, SecurityKind.ADMIN_GRANTED)
    assert await sweep(app) == 2
    handler, _ = smtp
    recipients = sorted(r for mail in handler.delivered for r in mail.rcpt_tos)
    assert recipients == sorted([admin.user.email, second.user.email])
    assert all("HIGH" in mail.subject for mail in handler.delivered)
    text = message_from_bytes(handler.delivered[0].content).get_payload()
    assert "member.admin_granted" in str(text)
    [post] = receiver.received
    assert signature_valid(post.body, post.headers[SIGNATURE_HEADER.lower()], ALERT_SECRET)
    assert not signature_valid(post.body, post.headers[SIGNATURE_HEADER.lower()], "x" * 40)
    payload = json.loads(post.body)
    assert payload["kind"] == "member.admin_granted"
    assert payload["severity"] == "HIGH"
    assert payload["workspaceId"] == encode_global_id("Organization", org.id)
    assert {a.status for a in await alerts(db)} == {AlertStatus.SENT}
    assert await sweep(app) == 0  # nothing is sent twice


async def test_an_attack_is_mailed_once_but_every_event_is_posted(
    app: Starlette,
    org: Organization,
    admin: Actor,
    smtp: tuple[RecordingHandler, int],
    receiver: AlertReceiver,
) -> None:
    for _ in range(3):
        await raise_event(app, org, SecurityKind.BRUTE_FORCE)
    await sweep(app)
    assert len(smtp[0].delivered) == 1
    assert len(receiver.received) == 3


async def test_admin_mail_is_limited_per_workspace_and_hour(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    org: Organization,
    admin: Actor,
    smtp: tuple[RecordingHandler, int],
) -> None:
    async with secops_app(
        database_urls,
        tmp_path,
        "memory",
        smtp_url=f"smtp://127.0.0.1:{smtp[1]}",
        smtp_from=SENDER,
        security_alert_mail_limit=2,
    ) as application:
        for kind in (
            SecurityKind.BRUTE_FORCE,
            SecurityKind.REFRESH_REUSE,
            SecurityKind.MFA_DISABLED,
        ):
            await raise_event(application, org, kind)
        await sweep(application)
        statuses = sorted(a.status for a in await alerts(runtime_of(application).db))
    assert len(smtp[0].delivered) == 2
    # Without WEFLUX_SECURITY_ALERT_URL the posts are suppressed, never pending forever.
    assert statuses.count(AlertStatus.SUPPRESSED) == 4
    assert statuses.count(AlertStatus.SENT) == 2


async def test_a_failed_post_is_retried_until_it_is_sent(
    app: Starlette, db: Database, org: Organization, receiver: AlertReceiver
) -> None:
    """Given an on-call webhook that answers 503 twice
    When the worker sweeps, and sweeps again once each retry is due
    Then the alert waits with its attempts counted, and the third POST delivers it."""
    receiver.statuses = [503, 503]
    await raise_event(app, org, SecurityKind.CREDENTIALS_CHANGED)
    for attempt in (1, 2):
        await sweep(app)
        [webhook] = [a for a in await alerts(db) if a.channel == "webhook"]
        assert webhook.status == AlertStatus.PENDING
        assert webhook.attempts == attempt
        assert webhook.next_attempt_at > utcnow()
        assert webhook.last_error == "HTTP 503"
        async with db.session() as session:  # time travel: the retry is due
            await session.exec(
                update(SecurityAlert)
                .where(col(SecurityAlert.id) == webhook.id)
                .values(next_attempt_at=utcnow() - timedelta(seconds=1))
            )
    await sweep(app)
    [webhook] = [a for a in await alerts(db) if a.channel == "webhook"]
    assert webhook.status == AlertStatus.SENT
    assert len(receiver.received) == 3
    assert len({post.body for post in receiver.received}) == 1  # the same signed body


async def test_an_unreachable_mail_server_keeps_the_alert_for_later(
    database_urls: DatabaseUrls, tmp_path: Path, org: Organization, admin: Actor
) -> None:
    async with secops_app(
        database_urls,
        tmp_path,
        "memory",
        smtp_url=f"smtp://127.0.0.1:{free_port()}",  # nobody listens
        smtp_from=SENDER,
    ) as application:
        await raise_event(application, org, SecurityKind.BRUTE_FORCE)
        await sweep(application)
        [mail] = [a for a in await alerts(runtime_of(application).db) if a.channel == "admin_mail"]
    assert mail.status == AlertStatus.PENDING
    assert mail.attempts == 1


async def test_a_new_device_login_mails_that_user(
    app: Starlette, db: Database, org: Organization, smtp: tuple[RecordingHandler, int]
) -> None:
    async with db.session(org.id) as session:
        target = await create_actor(session, Role.AGENT, email=fresh_email())
    for ip in (fresh_ip(), fresh_ip()):
        async with client_of(app, ip) as client:
            await token_for(client, target)
    await sweep(app)
    [mail] = smtp[0].delivered
    assert mail.rcpt_tos == [target.user.email]
    assert "new device" in mail.subject


async def test_a_platform_event_is_posted_without_a_workspace(
    app: Starlette, receiver: AlertReceiver, smtp: tuple[RecordingHandler, int]
) -> None:
    runtime = runtime_of(app)
    async with runtime.db.session() as session:
        await record_platform_event(
            session, SecurityKind.CREDENTIAL_STUFFING, "30 failed logins over 15 accounts"
        )
    await sweep(app)
    [post] = receiver.received
    assert json.loads(post.body)["workspaceId"] is None
    assert json.loads(post.body)["severity"] == "CRITICAL"
    assert smtp[0].delivered == []


async def test_the_worker_sweeps_the_alert_outbox(app: Starlette) -> None:
    jobs = {job.name: job for job in runtime_of(app).build_worker().jobs}
    assert jobs["security-alerts"].every == runtime_of(app).settings.security_alert_interval
