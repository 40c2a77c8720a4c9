"""The S3 media store going away: UPSTREAM_UNAVAILABLE (503 with Retry-After over HTTP),
one warning naming the store and the error's class, and no upload half-written.

The app reaches moto's S3 through a TCP proxy the tests cut (connections refused)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from sqlmodel import select

from tests.fixtures.api import error_codes, token_for
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.logs import LogCapture, capture_logs
from tests.fixtures.media import (
    JPEG,
    S3_SECRET,
    MediaInbox,
    S3Server,
    first_conversation,
    media_rows,
    media_settings,
    send_media,
    upload_media,
)
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.config import Settings
from weflux.errors import Unavailable
from weflux.ids import decode_global_id
from weflux.lifecycle.worker import sweep_abandoned_files
from weflux.media.store import DiskStore, unavailable
from weflux.models import Message, MessageStatus, StoredObjectIntent, utcnow
from weflux.worker.delivery import deliver_due_messages

BUCKET = f"weflux-outage-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def s3_proxy(s3_server: S3Server) -> AsyncIterator[TcpProxy]:
    """A cuttable path to moto's S3."""
    target = urlsplit(s3_server.endpoint_url)
    assert target.hostname is not None
    assert target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def settings(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    meta_url: str,
    s3_server: S3Server,
    s3_proxy: TcpProxy,
) -> Settings:
    client = s3_server.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    through_proxy = S3Server(f"http://127.0.0.1:{s3_proxy.port}")
    return media_settings(
        database_urls,
        tmp_path,
        meta_url,
        BUCKET,
        through_proxy,
        media_s3_timeout=timedelta(seconds=0.5),
    )


def _warnings(logs: LogCapture) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in logs.lines]
    return [e for e in entries if e["msg"] == "the media store is unavailable"]


def _logged(logs: LogCapture) -> str:
    """What production logs (INFO and above; boto3's DEBUG lines name the endpoint)."""
    return "\n".join(line for line in logs.lines if json.loads(line)["level"] != "debug")


def _objects(s3_server: S3Server, settings: Settings) -> set[str]:
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"] for item in listed}


async def test_an_upload_while_s3_is_down_is_upstream_unavailable_and_leaves_nothing(
    media_inbox: MediaInbox,
    agent: Actor,
    s3_proxy: TcpProxy,
    s3_server: S3Server,
    settings: Settings,
) -> None:
    """Given S3 that refuses connections,
    when an Agent uploads a JPEG,
    then uploadMedia is UPSTREAM_UNAVAILABLE with retryAfter, no media row, no object and
    no scratch file remain, and one warning names the store and the error's class, not
    the S3 secret or endpoint; once S3 is back the same upload succeeds."""
    client = media_inbox.client
    token = await token_for(client, agent)
    before = _objects(s3_server, settings)
    await s3_proxy.cut()

    with capture_logs() as logs:
        refused = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")

    assert error_codes(refused) == ["UPSTREAM_UNAVAILABLE"]
    assert refused.json()["errors"][0]["extensions"]["retryAfter"] == 30
    assert await media_rows(media_inbox) == set()
    assert _objects(s3_server, settings) == before
    assert [p for p in settings.media_directory.rglob("*") if p.is_file()] == []
    [warning] = _warnings(logs)
    assert (warning["level"], warning["store"]) == ("warning", "s3")
    assert warning["error"] == "EndpointConnectionError"
    assert S3_SECRET not in logs.text
    assert f"127.0.0.1:{s3_proxy.port}" not in _logged(logs)
    assert "INTERNAL_SERVER_ERROR" not in _logged(logs)

    await s3_proxy.restore()
    again = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    assert again.json()["data"]["uploadMedia"]["size"] == len(JPEG)


async def test_an_upload_to_an_s3_that_hangs_is_upstream_unavailable_within_its_timeout(
    media_inbox: MediaInbox, agent: Actor, s3_proxy: TcpProxy, settings: Settings
) -> None:
    """Given S3 that accepts connections and never answers, and WEFLUX_MEDIA_S3_TIMEOUT
    of 0.5 s, when an Agent uploads a JPEG, then uploadMedia is UPSTREAM_UNAVAILABLE within
    seconds (boto3's own timeouts, 60 s per read, held it for minutes: far past the wait
    here), logged as a timeout of the S3 store; once S3 answers the upload succeeds."""
    assert settings.media_s3_timeout == timedelta(seconds=0.5)
    client = media_inbox.client
    token = await token_for(client, agent)
    await s3_proxy.stall()

    with capture_logs() as logs:
        refused = await asyncio.wait_for(
            upload_media(client, token, JPEG, "a.jpg", "image/jpeg"), timeout=30
        )

    assert error_codes(refused) == ["UPSTREAM_UNAVAILABLE"]
    [warning] = _warnings(logs)
    assert warning["store"] == "s3"
    assert "Timeout" in warning["error"]
    assert await media_rows(media_inbox) == set()

    await s3_proxy.restore()
    again = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    assert again.json()["data"]["uploadMedia"]["size"] == len(JPEG)


async def test_a_media_send_while_s3_is_down_is_retried_with_the_backoff(
    media_inbox: MediaInbox, agent: Actor, s3_proxy: TcpProxy
) -> None:
    """Given a queued sendMedia message and then S3 refusing connections,
    when the delivery worker runs, then nothing is sent, the message stays QUEUED with a
    next attempt (the backoff of any outage, not a crash left to the lease), logged as a
    warning naming the error's class; once S3 is back and the attempt is due, it is SENT."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    token = await token_for(client, agent)
    uploaded = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    media = uploaded.json()["data"]["uploadMedia"]
    queued = (await send_media(client, token, conversation, media["id"])).json()
    message_id = decode_global_id(queued["data"]["sendMedia"]["id"], "Message")
    runtime = media_inbox.runtime
    await s3_proxy.cut()

    with capture_logs() as logs:
        await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings)

    assert media_inbox.fake.sent == []
    async with runtime.db.session(media_inbox.account.org_id) as session:
        row = await session.get(Message, message_id)
        assert row is not None
        assert (row.status, row.attempts) == (MessageStatus.QUEUED, 1)
        assert row.next_attempt_at is not None
        row.next_attempt_at = utcnow()  # due now
        session.add(row)
    entries = [json.loads(line) for line in logs.lines]
    [waiting] = [e for e in entries if e["msg"] == "message send waits for the media store"]
    assert waiting["level"] == "warning"
    assert waiting["error"] == "EndpointConnectionError"
    assert not [e for e in entries if e["level"] in ("error", "critical")]

    await s3_proxy.restore()
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1
    assert len(media_inbox.fake.sent) == 1
    async with runtime.db.session(media_inbox.account.org_id) as session:
        row = await session.get(Message, message_id)
        assert row is not None
        assert row.status == MessageStatus.SENT


async def test_a_file_fetched_while_s3_is_down_is_503_with_retry_after(
    media_inbox: MediaInbox, agent: Actor, s3_proxy: TcpProxy
) -> None:
    """Given an uploaded file and then S3 refusing connections,
    when its uploader fetches it,
    then 503 `{"error": {"code": "UPSTREAM_UNAVAILABLE"}}` with Retry-After, logged as a
    warning; once S3 is back the file is served whole."""
    client = media_inbox.client
    token = await token_for(client, agent)
    uploaded = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    path = uploaded.json()["data"]["uploadMedia"]["downloadPath"]
    headers = {"Authorization": f"Bearer {token}"}
    await s3_proxy.cut()

    with capture_logs() as logs:
        response = await client.get(path, headers=headers)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert [w["store"] for w in _warnings(logs)] == ["s3"]
    assert S3_SECRET not in logs.text

    await s3_proxy.restore()
    served = await client.get(path, headers=headers)
    assert served.status_code == 200
    assert served.content == JPEG


@pytest.mark.parametrize(
    ("status", "code", "outage"),
    [(503, "SlowDown", True), (500, "InternalError", True), (403, "AccessDenied", False)],
)
def test_an_s3_5xx_is_an_outage_a_4xx_is_not(
    tmp_path: Path, status: int, code: str, outage: bool
) -> None:
    """A 5xx S3 answer (after boto3's retries) is UPSTREAM_UNAVAILABLE; a refusal such as
    AccessDenied is a misconfiguration of ours and stays an unexpected error."""
    error = ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )
    assert isinstance(unavailable(DiskStore(tmp_path), error), Unavailable) is outage


async def _intent_keys(inbox: MediaInbox) -> set[str]:
    async with inbox.db.session(inbox.account.org_id) as session:
        return set((await session.exec(select(StoredObjectIntent.storage_key))).all())


async def test_an_upload_whose_s3_answer_is_lost_after_the_put_landed_leaves_nothing(
    media_inbox: MediaInbox,
    agent: Actor,
    s3_proxy: TcpProxy,
    s3_server: S3Server,
    settings: Settings,
) -> None:
    """Given S3 that stores what it is sent and whose answers are lost on the way back,
    when an Agent uploads a JPEG, then uploadMedia is UPSTREAM_UNAVAILABLE and no row
    names the object that landed; the worker's sweep leaves it while it may still be a
    write under way, and an hour later deletes it (and only it): nothing outlives the
    upload that failed."""
    client = media_inbox.client
    token = await token_for(client, agent)
    kept = await upload_media(client, token, JPEG, "kept.jpg", "image/jpeg")
    assert kept.json()["data"]["uploadMedia"]["size"] == len(JPEG)
    before = _objects(s3_server, settings)
    await s3_proxy.deafen()

    refused = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")

    assert error_codes(refused) == ["UPSTREAM_UNAVAILABLE"]
    assert len(await media_rows(media_inbox)) == 1
    landed = _objects(s3_server, settings) - before
    assert len(landed) == 1  # the PUT landed; its answer never came
    [key] = await _intent_keys(media_inbox)
    assert landed == {f"inbox/{key}"}

    await s3_proxy.restore()
    lifecycle = media_inbox.lifecycle()
    assert await sweep_abandoned_files(lifecycle) == 0  # young: maybe a write under way
    assert _objects(s3_server, settings) - before == landed
    assert await sweep_abandoned_files(lifecycle, now=utcnow() + timedelta(hours=2)) == 1
    assert _objects(s3_server, settings) == before
    assert await _intent_keys(media_inbox) == set()
    assert await sweep_abandoned_files(lifecycle, now=utcnow() + timedelta(hours=2)) == 0


async def test_the_sweep_survives_s3_going_away_and_deletes_on_its_next_run(
    media_inbox: MediaInbox,
    agent: Actor,
    s3_proxy: TcpProxy,
    s3_server: S3Server,
    settings: Settings,
) -> None:
    """Given an object whose upload's answer was lost (no row names it), and then S3
    refusing connections, when the sweep runs an hour later, then it deletes nothing,
    keeps the intent, and warns once naming the store and the error's class (never the
    endpoint or the secret); once S3 is back the next sweep deletes the object."""
    client = media_inbox.client
    token = await token_for(client, agent)
    before = _objects(s3_server, settings)
    await s3_proxy.deafen()
    refused = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    assert error_codes(refused) == ["UPSTREAM_UNAVAILABLE"]
    await s3_proxy.cut()
    lifecycle = media_inbox.lifecycle()
    later = utcnow() + timedelta(hours=2)

    with capture_logs() as logs:
        assert await sweep_abandoned_files(lifecycle, now=later) == 0

    entries = [json.loads(line) for line in logs.lines]
    [warning] = [e for e in entries if "abandoned file" in e["msg"]]
    assert (warning["level"], warning["store"]) == ("warning", "s3")
    assert warning["error"] == "EndpointConnectionError"
    assert S3_SECRET not in logs.text
    assert f"127.0.0.1:{s3_proxy.port}" not in _logged(logs)
    assert len(await _intent_keys(media_inbox)) == 1
    assert len(_objects(s3_server, settings) - before) == 1

    await s3_proxy.restore()
    assert await sweep_abandoned_files(lifecycle, now=later) == 1
    assert _objects(s3_server, settings) == before
    assert await _intent_keys(media_inbox) == set()
