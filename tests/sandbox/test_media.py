"""`POST /sandbox/media` and `simulate message --image`: a customer's image that downloads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import gql
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import SECRET, live_server
from tests.fixtures.sandbox import PNG, Demo, demo_token, sandbox_settings
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.cli import build_parser
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Message, Role
from weflux.sandbox.channels import MEDIA_KEEP_BYTES, MEDIA_KEEP_FILES, Sandbox
from weflux.sandbox.simulate import MAX_IMAGE_BYTES, SimulateError, report, simulate
from weflux.whatsapp.errors import ErrorKind, MetaApiError

pytest_plugins = ["tests.fixtures.sandbox"]

CUSTOMER = "15557770042"
# The first bytes of a JPEG and a WebP file: what the sniffing recognises.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 64
MEDIA_QUERY = """query($id: ID!) { node(id: $id) { ... on Message {
  media { id mimeType sha256 downloadPath failure } } } }"""


@pytest.fixture
def live_settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The sandbox fixtures' live server, in development (where the sandbox routes exist)."""
    return sandbox_settings(database_urls, tmp_path, env="development")


async def _image_message(db: Database, workspace: Demo) -> Message:
    async with asyncio.timeout(10):
        while True:
            async with db.session(workspace.account.org_id) as session:
                found = (await session.exec(select(Message).where(Message.type == "image"))).first()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def test_a_simulated_image_downloads_and_is_served_with_its_bytes(
    live: str,
    http: httpx.AsyncClient,
    db: Database,
    demo_workspace: Demo,
    live_settings: Settings,
    tmp_path: Path,
) -> None:
    """Given the demo number in development,
    when `simulate message --image photo.png` runs,
    then the file reaches the sandbox, the worker downloads it (checking its SHA-256), and
    /media/{id} serves the same bytes to the Admin."""
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    args = build_parser().parse_args(
        ["simulate", "message", "--from", CUSTOMER, "--image", str(image), "--url", live]
    )
    outcome = await simulate(args, live_settings)
    assert outcome.http_status == 200, outcome.answer
    assert outcome.note is None
    assert "NOTE" not in report(outcome)
    sent = outcome.body["entry"][0]["changes"][0]["value"]["messages"][0]["image"]
    assert sent["sha256"] == base64.b64encode(hashlib.sha256(PNG).digest()).decode()

    message = await _image_message(db, demo_workspace)
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    node = encode_global_id("Message", message.id)
    async with asyncio.timeout(15):
        while True:
            answer = (await gql(http, token, MEDIA_QUERY, {"id": node})).json()
            media = answer["data"]["node"]["media"]
            if media["downloadPath"] or media["failure"]:
                break
            await asyncio.sleep(0.1)
    assert media["failure"] is None
    assert media["sha256"] == sent["sha256"]
    served = await http.get(media["downloadPath"], headers={"Authorization": f"Bearer {token}"})
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("image/png", PNG), ("image/jpeg", JPEG), ("image/webp", WEBP), ("image/png; x=1", PNG)],
)
async def test_an_image_is_held_and_its_digest_answered(
    http: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    response = await http.post(
        "/sandbox/media", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert answer["id"].isdigit()
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("text/plain", PNG, 415, "UNSUPPORTED_MEDIA_TYPE"),  # a form's type: no preflight
        ("application/x-www-form-urlencoded", PNG, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("image/gif", b"GIF89a" + b"\x00" * 32, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("", PNG, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("image/jpeg", PNG, 400, "BAD_REQUEST"),  # the bytes are not the declared type
        ("image/webp", JPEG, 400, "BAD_REQUEST"),
        ("image/png", b"<svg onload=alert(1)>", 400, "BAD_REQUEST"),
        ("image/png", b"", 400, "BAD_REQUEST"),
    ],
)
async def test_a_body_that_is_not_the_declared_image_is_refused(
    http: httpx.AsyncClient, content_type: str, body: bytes, status: int, code: str
) -> None:
    response = await http.post(
        "/sandbox/media", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_a_file_over_5_mb_is_refused_by_its_length_and_by_its_bytes(
    live: str, live_app: Starlette
) -> None:
    # In process: over a socket the server's early 413 cuts the upload off mid-send.
    transport = httpx.ASGITransport(app=live_app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        await _refused_when_too_big(http)


async def _refused_when_too_big(http: httpx.AsyncClient) -> None:
    too_big = PNG + b"\x00" * (MAX_IMAGE_BYTES + 1 - len(PNG))
    declared = await http.post(
        "/sandbox/media", content=too_big, headers={"Content-Type": "image/png"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    streamed = await http.post(
        "/sandbox/media", content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    at_limit = PNG + b"\x00" * (MAX_IMAGE_BYTES - len(PNG))
    accepted = await http.post(
        "/sandbox/media", content=at_limit, headers={"Content-Type": "image/png"}
    )
    assert accepted.status_code == 200


@pytest.mark.parametrize("host", ["rebind.attacker.example", "127.0.0.1.nip.io:8000"])
async def test_a_rebound_name_cannot_post_media(http: httpx.AsyncClient, host: str) -> None:
    response = await http.post(
        "/sandbox/media", content=PNG, headers={"Content-Type": "image/png", "Host": host}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_outside_development_there_is_no_media_route_and_simulate_says_so(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a server in test (the sandbox page's routes are development only),
    when an image is posted to the route, or simulated,
    then the route is 404 and simulate notes that the file stays local."""
    settings = make_settings(
        tmp_path,
        env="test",
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
    )
    async with (
        live_server(create_app(settings)) as base,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http,
    ):
        posted = await http.post(
            "/sandbox/media", content=PNG, headers={"Content-Type": "image/png"}
        )
        assert posted.status_code == 404
        image = tmp_path / "photo.png"
        image.write_bytes(PNG)
        args = build_parser().parse_args(
            [
                "simulate",
                "message",
                "--image",
                str(image),
                "--url",
                base,
                "--app-secret",
                SECRET,
                "--channel",
                "106540352242922",
            ]
        )
        outcome = await simulate(args, settings)
    assert outcome.http_status == 200
    assert outcome.note is not None
    assert "NOTE: " in report(outcome)
    assert "stays local" in report(outcome)


async def test_an_unknown_media_id_fails_at_once_as_permanent(tmp_path: Path) -> None:
    """Given the sandbox's Cloud API, when a media id it does not hold is asked for, then
    it answers Meta's 100/33 (no such object), which the client classifies PERMANENT."""
    sandbox = Sandbox(make_settings(tmp_path))
    try:
        started = time.monotonic()
        with pytest.raises(MetaApiError) as unknown:
            await sandbox.client.media_info("1234567890123456", "any-token")
        assert time.monotonic() - started < 2
        assert (unknown.value.code, unknown.value.subcode) == (100, 33)
        assert unknown.value.http_status == 400
        assert unknown.value.kind == ErrorKind.PERMANENT
        assert "Object with ID '1234567890123456' does not exist" in unknown.value.title

        held = sandbox.api.add_media(PNG, "image/png")
        info = await sandbox.client.media_info(held, "any-token")
        assert info.sha256 == hashlib.sha256(PNG).hexdigest()
        async with sandbox.client.media_stream(held, info.url, "any-token") as chunks:
            assert b"".join([chunk async for chunk in chunks]) == PNG
    finally:
        await sandbox.aclose()


async def test_the_sandbox_keeps_only_the_newest_media(tmp_path: Path) -> None:
    sandbox = Sandbox(make_settings(tmp_path))
    try:
        ids = [sandbox.api.add_media(PNG, "image/png") for _ in range(MEDIA_KEEP_FILES + 5)]
        assert list(sandbox.api.media) == ids[5:]
        with pytest.raises(MetaApiError) as dropped:
            await sandbox.client.media_info(ids[0], "any-token")
        assert dropped.value.kind == ErrorKind.PERMANENT
    finally:
        await sandbox.aclose()


async def test_the_sandbox_keeps_media_within_its_byte_bound(tmp_path: Path) -> None:
    sandbox = Sandbox(make_settings(tmp_path))
    try:
        big = PNG + b"\x00" * (MAX_IMAGE_BYTES - len(PNG))
        ids = [sandbox.api.add_media(big, "image/png") for _ in range(MEDIA_KEEP_FILES - 1)]
        held = sum(len(media.content) for media in sandbox.api.media.values())
        assert held <= MEDIA_KEEP_BYTES
        assert ids[-1] in sandbox.api.media
        assert ids[0] not in sandbox.api.media
    finally:
        await sandbox.aclose()


async def test_simulate_stops_with_a_clear_error_when_the_sandbox_refuses_the_file(
    live: str, demo_workspace: Demo, live_settings: Settings, db: Database, tmp_path: Path
) -> None:
    """Given a file named .png that is not a PNG, when simulate posts it, then the server's
    400 is a SimulateError naming it (exit status 2), and no webhook was sent."""
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"<html>not an image</html>")
    args = build_parser().parse_args(
        ["simulate", "message", "--from", CUSTOMER, "--image", str(fake), "--url", live]
    )
    with pytest.raises(SimulateError) as refused:
        await simulate(args, live_settings)
    assert "HTTP 400" in str(refused.value)
    assert "the bytes are not image/png" in str(refused.value)
    async with db.session(demo_workspace.account.org_id) as session:
        assert (await session.exec(select(Message).where(Message.type == "image"))).first() is None
