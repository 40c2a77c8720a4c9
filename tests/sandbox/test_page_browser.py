"""The sandbox page in a real browser: a customer writes, the reply's ticks reach read."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from starlette.applications import Starlette

from tests.fixtures.api import gql
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import ADDED, until_listening
from tests.fixtures.sandbox import Demo, demo_token, sandbox_settings
from tests.fixtures.ws import GraphQLSocket
from weflux.config import Settings
from weflux.models import Role

pytest_plugins = ["tests.fixtures.sandbox", "tests.fixtures.browser"]

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
    errors: list[str] = []  # console errors include violations of the page's policy
    page.on("console", lambda entry: errors.append(entry.text) if entry.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
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
