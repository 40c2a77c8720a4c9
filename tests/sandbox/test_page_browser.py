"""The sandbox page in a real browser: a customer writes and sends an image, the replies
(text and image) show with their ticks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import FilePayload, Page, expect
from starlette.applications import Starlette

from tests.fixtures.api import gql
from tests.fixtures.browser import console_errors
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import ADDED, until_listening
from tests.fixtures.media import send_media, upload_media
from tests.fixtures.sandbox import PNG, Demo, demo_token, inbox_conversation, sandbox_settings
from tests.fixtures.ws import GraphQLSocket
from weflux.config import Settings
from weflux.models import Role

pytest_plugins = ["tests.fixtures.sandbox", "tests.fixtures.browser"]

PHONE = "+15557770010"
SEND = """mutation($input: SendMessageInput!) { sendMessage(input: $input) { id status } }"""


@pytest.fixture
def live_settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The sandbox fixtures' live server, in development (where the page exists)."""
    return sandbox_settings(database_urls, tmp_path, env="development")


async def test_a_new_customer_writes_hi_and_sees_the_reply_reach_read(
    browser_page: Page,  # first: without Chromium the test skips before a server starts
    live: str,
    http: httpx.AsyncClient,
    live_app: Starlette,
    demo_workspace: Demo,
) -> None:
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    socket = await GraphQLSocket.connect(live, token)
    added = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)

    page = browser_page
    errors = console_errors(page)  # a violation of the page's policy would be one
    await page.goto(f"{live}/sandbox")
    await page.locator("#phone").fill("+15557770009")
    await page.locator("#name").fill("Ada")
    await page.locator("#text").fill("Hi")
    await page.locator("#send").click()
    await expect(page.locator("#thread li.in")).to_have_text("Hi")

    message = (await socket.next(added))["payload"]["data"]["messageAdded"]
    await socket.close()
    assert (message["text"], message["direction"]) == ("Hi", "INBOUND")
    assert message["conversation"]["contact"]["name"] == "Ada"
    await expect(page.locator("#contacts")).to_contain_text("Ada (+15557770009)")

    response = await gql(
        http,
        token,
        SEND,
        {"input": {"conversationId": message["conversation"]["id"], "text": "Hello Ada"}},
    )
    assert response.json()["data"]["sendMessage"]["status"] == "QUEUED", response.text
    reply = page.locator("#thread li.out")
    await expect(reply.locator(".text")).to_have_text("Hello Ada")
    await expect(reply).to_have_attribute("data-status", "read")
    await expect(reply.locator(".ticks")).to_have_text("✓✓")
    await expect(reply.locator(".ticks")).to_have_class("ticks read")
    assert await page.locator("#error").text_content() == ""
    assert errors == []


HISTORY = """query($id: ID!) { node(id: $id) { ... on Conversation { messages(last: 5) {
  edges { node { direction text media { mimeType downloadPath failure } } } } } } }"""


async def _downloaded_media(
    http: httpx.AsyncClient, token: str, conversation: str
) -> tuple[str, dict[str, Any]]:
    """The customer's image message's text and media, once the worker downloaded it."""
    async with asyncio.timeout(15):
        while True:
            answer = (await gql(http, token, HISTORY, {"id": conversation})).json()
            edges = answer["data"]["node"]["messages"]["edges"]
            message = next(e["node"] for e in edges if e["node"]["direction"] == "INBOUND")
            if message["media"]["downloadPath"] or message["media"]["failure"]:
                return message["text"], message["media"]
            await asyncio.sleep(0.1)


async def test_the_customer_sends_an_image_and_sees_the_business_send_one_back(
    browser_page: Page,  # first: without Chromium the test skips before a server starts
    live: str,
    http: httpx.AsyncClient,
    demo_workspace: Demo,
) -> None:
    """Given the page in development,
    when the customer picks a wrong file, a too large one, one the server refuses, then a
    real PNG with a caption,
    then each refusal is said on the page, the PNG reaches the inbox and downloads
    (`/media/{id}` serves its bytes), and a `sendMedia` reply shows as an image."""
    page = browser_page
    errors = console_errors(page)  # a violation of the page's policy would be one
    failed: list[tuple[int, str]] = []  # the page's requests answered with an error
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
    await page.goto(f"{live}/sandbox")
    await page.locator("#phone").fill(PHONE)
    await page.locator("#name").fill("Ada")

    picker = page.locator("#image")
    refused = [
        ("anim.gif", "image/gif", b"GIF89a", "anim.gif is not a JPEG, PNG or WebP image"),
        ("big.png", "image/png", PNG + b"\0" * (5 * 1024 * 1024), "big.png is too large"),
        ("fake.png", "image/png", b"not a png", "The server refused fake.png: body: the bytes"),
    ]
    for name, mime_type, content, said in refused:
        await picker.set_input_files(FilePayload(name=name, mimeType=mime_type, buffer=content))
        await expect(page.locator("#error")).to_contain_text(said)
    await expect(page.locator("#thread li")).to_have_count(0)

    await page.locator("#text").fill("my order")
    await picker.set_input_files(FilePayload(name="order.png", mimeType="image/png", buffer=PNG))
    sent = page.locator("#thread li.in")
    await expect(sent.locator(".text")).to_have_text("my order")
    await expect(sent.locator("img.media")).to_be_visible()
    assert await sent.locator("img.media").evaluate("image => image.naturalWidth") == 1
    await expect(page.locator("#error")).to_have_text("")

    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = (await inbox_conversation(http, token, PHONE[1:]))["id"]
    text, media = await _downloaded_media(http, token, conversation)
    assert (text, media["mimeType"], media["failure"]) == ("my order", "image/png", None)
    served = await http.get(media["downloadPath"], headers={"Authorization": f"Bearer {token}"})
    assert (served.status_code, served.content) == (200, PNG)

    uploaded = await upload_media(http, token, PNG, "reply.png", "image/png")
    media_id = uploaded.json()["data"]["uploadMedia"]["id"]
    answer = await send_media(http, token, conversation, media_id, caption="here it is")
    assert answer.json()["data"]["sendMedia"]["status"] == "QUEUED", answer.text
    reply = page.locator("#thread li.out")
    await expect(reply.locator(".text")).to_have_text("here it is")
    await expect(reply.locator("img.media")).to_be_visible()
    assert await reply.locator("img.media").evaluate("image => image.naturalWidth") == 1
    await expect(reply).to_have_attribute("data-status", "read")

    await reply.locator('button[data-emoji="👍"]').click()
    await expect(reply.locator(".reaction.customer")).to_have_text("👍")
    # The refused upload is the one request of the page that failed, and the console says
    # only that (no policy violation, no exception).
    assert failed == [(400, f"{live}/sandbox/media")]
    assert errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
