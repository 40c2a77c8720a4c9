"""`GET /sandbox` and its JSON endpoints: the customer's phone, development only."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import SECRET, live_server
from tests.fixtures.sandbox import Demo, demo_token, inbox_conversation, reply, sandbox_settings
from tests.fixtures.settings import PRODUCTION_MAIL, make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.models import Role, WhatsAppAccount
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER

pytest_plugins = ["tests.fixtures.sandbox"]

CUSTOMER = "+15557770001"


@pytest.fixture
def live_settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The sandbox fixtures' live server, in development (where the page exists)."""
    return sandbox_settings(database_urls, tmp_path, env="development")


async def test_the_page_and_its_script_are_served_under_a_strict_policy(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/sandbox")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    # Images only from the app (GET /sandbox/media/{id}): no data: or blob: URL.
    assert "img-src 'self';" in policy
    assert "data:" not in policy
    assert "blob:" not in policy
    assert '<script src="/sandbox/sandbox.js"' in page.text
    # Nothing inline for a policy to allow: no script body, handler attribute or style.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page.text, re.DOTALL)
    assert [(("src=" in attributes), body.strip()) for attributes, body in scripts] == [(True, "")]
    assert re.findall(r"\son\w+\s*=|\sstyle\s*=|<style", page.text, re.IGNORECASE) == []
    script = await http.get("/sandbox/sandbox.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/sandbox/messages" in script.text
    assert (await http.get("/sandbox/sandbox.css")).status_code == 200


async def test_the_customer_writes_and_sees_the_reply_reach_read(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    written = await http.post(
        "/sandbox/messages", json={"phone": CUSTOMER, "name": "Ana", "text": "Hi"}
    )
    assert written.status_code == 200, written.text
    assert written.json()["id"].startswith("wamid.")
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = await inbox_conversation(http, token, CUSTOMER[1:])
    assert conversation["contact"]["name"] == "Ana"
    assert conversation["lastMessage"]["text"] == "Hi"
    contacts = (await http.get("/sandbox/contacts")).json()["contacts"]
    assert {"phone": CUSTOMER, "name": "Ana"} in contacts

    await reply(http, token, conversation["id"], "Hello Ana")
    async with asyncio.timeout(10):
        while True:
            shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
            out = [m for m in shown["messages"] if m["direction"] == "out"]
            if out and out[0]["status"] == "read":
                break
            await asyncio.sleep(0.05)
    first, second = shown["messages"]
    assert (first["direction"], first["text"]) == ("in", "Hi")
    assert (second["direction"], second["text"], second["error"]) == ("out", "Hello Ana", None)


async def test_the_phone_sees_only_its_own_messages(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    for phone in (CUSTOMER, "+15557770002"):
        response = await http.post("/sandbox/messages", json={"phone": phone, "text": phone})
        assert response.status_code == 200
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
    assert [m["text"] for m in shown["messages"]] == [CUSTOMER]


@pytest.mark.parametrize(
    "body",
    [
        {"phone": "not a number", "text": "Hi"},
        {"phone": CUSTOMER, "text": ""},
        {"phone": CUSTOMER, "text": "x" * 4097},
        ["not", "an", "object"],
    ],
)
async def test_bad_input_is_refused(
    http: httpx.AsyncClient, demo_workspace: Demo, body: Any
) -> None:
    response = await http.post("/sandbox/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("phone", ["+1234567", "+1 555 0100", "+999 123456789"])
async def test_a_number_the_inbox_would_refuse_is_refused_in_its_words(
    http: httpx.AsyncClient, demo_workspace: Demo, phone: str
) -> None:
    """Given a number createContact and startConversation refuse (the one rule)
    When the customer writes from it
    Then it is 400 on `phone` with the inbox's wording (before, 6 to 21 characters went)."""
    response = await http.post("/sandbox/messages", json={"phone": phone, "text": "Hi"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"] == [{"field": "phone", "message": INVALID_PHONE_NUMBER}]


async def test_a_number_is_the_contact_the_inbox_would_store(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given a number typed with a trunk 0 after its country code
    When the customer writes from it
    Then the inbox's contact is its E.164 number (as startConversation would store it),
    and the page reads the thread back with the number as typed."""
    typed = "+44 (0)7700 900123"
    written = await http.post("/sandbox/messages", json={"phone": typed, "text": "Hi"})
    assert written.status_code == 200, written.text
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = await inbox_conversation(http, token, "447700900123")
    assert conversation["lastMessage"]["text"] == "Hi"
    shown = (await http.get("/sandbox/messages", params={"phone": typed})).json()
    assert [m["text"] for m in shown["messages"]] == ["Hi"]


async def test_a_body_nested_past_the_json_parsers_stack_is_refused(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    deep = "[" * 5000 + "]" * 5000
    response = await http.post(
        "/sandbox/messages", content=deep, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BAD_REQUEST"


async def test_a_message_body_over_its_cap_is_refused_unread(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given message bodies over 64 KiB, one declaring its length and one streamed
    without it (chunked),
    when the customer posts them,
    then each is 413 PAYLOAD_TOO_LARGE and the phone shows nothing; the longest text
    allowed, each character escaped in the JSON, still goes through."""
    padded = json.dumps({"phone": CUSTOMER, "text": "Hi", "pad": "x" * 70_000})

    async def chunks() -> Any:
        for start in range(0, len(padded), 8192):
            yield padded[start : start + 8192].encode()

    for content in (padded.encode(), chunks()):
        response = await http.post(
            "/sandbox/messages", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
    assert shown["messages"] == []

    longest = json.dumps({"phone": CUSTOMER, "text": "\N{GRINNING FACE}" * 4096})
    accepted = await http.post(
        "/sandbox/messages", content=longest, headers={"Content-Type": "application/json"}
    )
    assert accepted.status_code == 200, accepted.text


async def test_another_sites_form_cannot_post_a_message(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    body = json.dumps({"phone": CUSTOMER, "text": "Hi"})
    response = await http.post(
        "/sandbox/messages", content=body, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
    assert shown["messages"] == []


@pytest.mark.parametrize("host", ["rebind.attacker.example", "127.0.0.1.nip.io:8000"])
async def test_a_rebound_name_gets_nothing(
    http: httpx.AsyncClient, demo_workspace: Demo, host: str
) -> None:
    """Given a name an attacker controls resolving to this machine (DNS rebinding),
    when its page reads or writes the sandbox, then every endpoint answers 403 and no
    message is written."""
    rebound = {"Host": host}
    for path in ("/sandbox", "/sandbox/sandbox.js", "/sandbox/contacts"):
        response = await http.get(path, headers=rebound)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "FORBIDDEN"
    posted = await http.post(
        "/sandbox/messages", json={"phone": CUSTOMER, "text": "Hi"}, headers=rebound
    )
    assert posted.status_code == 403
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
    assert shown["messages"] == []


@pytest.mark.parametrize("host", ["localhost:8000", "app.localhost", "[::1]:8000", "10.1.2.3"])
async def test_this_machines_names_and_addresses_are_served(
    http: httpx.AsyncClient, demo_workspace: Demo, host: str
) -> None:
    """Given the names a developer's browser sends (localhost, an address typed by hand),
    when the page is asked for, then it is served."""
    response = await http.get("/sandbox", headers={"Host": host})
    assert response.status_code == 200


async def test_only_sandbox_channels_are_written_to(
    http: httpx.AsyncClient, channel: WhatsAppAccount
) -> None:
    """A real (not sandbox) number is there, no sandbox channel: the page writes nowhere."""
    assert not channel.sandbox
    response = await http.post("/sandbox/messages", json={"phone": CUSTOMER, "text": "Hi"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize("env", ["test", "production"])
async def test_outside_development_there_is_no_sandbox_page(
    database_urls: DatabaseUrls, tmp_path: Path, env: str
) -> None:
    extra = PRODUCTION_MAIL if env == "production" else {}
    settings = make_settings(
        tmp_path,
        env=env,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
        **extra,
    )
    async with (
        live_server(create_app(settings)) as base,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http,
    ):
        for path in ("/sandbox", "/sandbox/sandbox.js", "/sandbox/contacts"):
            assert (await http.get(path)).status_code == 404
        posted = await http.post("/sandbox/messages", json={"phone": CUSTOMER, "text": "Hi"})
        assert posted.status_code == 404
