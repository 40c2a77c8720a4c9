"""The sandbox page's phone beyond text: images, locations and reactions, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.api import gql
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.media import send_media, upload_media
from tests.fixtures.sandbox import (
    PNG,
    Demo,
    demo_token,
    inbox_conversation,
    phone_shows,
    reply,
    sandbox_settings,
)
from weflux.config import Settings
from weflux.models import Role

pytest_plugins = ["tests.fixtures.sandbox"]

CUSTOMER = "+15557770021"
HISTORY = """query($id: ID!) { node(id: $id) { ... on Conversation { messages(last: 20) {
  edges { node { id type waMessageId text location { latitude longitude }
    reactions { emoji fromContact } } } } } } }"""
REACT = """mutation($input: ReactToMessageInput!) { reactToMessage(input: $input) { id } }"""


@pytest.fixture
def live_settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The sandbox fixtures' live server, in development (where the page exists)."""
    return sandbox_settings(database_urls, tmp_path, env="development")


async def _write(http: httpx.AsyncClient, **content: Any) -> httpx.Response:
    return await http.post("/sandbox/messages", json={"phone": CUSTOMER, "name": "Ana", **content})


async def _held(http: httpx.AsyncClient, body: bytes = PNG) -> str:
    response = await http.post(
        "/sandbox/media", content=body, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def _history(http: httpx.AsyncClient, token: str, conversation: str) -> list[dict[str, Any]]:
    answer = (await gql(http, token, HISTORY, {"id": conversation})).json()
    return [edge["node"] for edge in answer["data"]["node"]["messages"]["edges"]]


async def test_the_customer_sends_an_image_the_phone_shows_it_and_the_inbox_gets_it(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given an image the page gave to POST /sandbox/media,
    when the customer sends it with a caption,
    then the phone shows it (served by GET /sandbox/media/{id}) and the inbox has it."""
    media_id = await _held(http)
    written = await _write(http, image=media_id, caption="my order")
    assert written.status_code == 200, written.text

    (shown,) = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()["messages"]
    assert (shown["direction"], shown["kind"], shown["text"]) == ("in", "image", "my order")
    assert shown["media"]["url"] == f"/sandbox/media/{media_id}"
    served = await http.get(shown["media"]["url"])
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert served.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["cache-control"] == "no-store"

    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = await inbox_conversation(http, token, CUSTOMER[1:])
    (message,) = await _history(http, token, conversation["id"])
    assert (message["type"], message["text"], message["waMessageId"]) == (
        "IMAGE",
        "my order",
        written.json()["id"],
    )


async def test_a_location_and_a_reaction_to_the_business_reach_the_inbox(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given a reply of the business on the phone,
    when the customer sends a location and reacts 👍 to the reply, then takes it back,
    then the inbox has both and the phone shows the reaction on the reply, then not."""
    assert (await _write(http, text="Hi")).status_code == 200
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = (await inbox_conversation(http, token, CUSTOMER[1:]))["id"]
    await reply(http, token, conversation, "Hello Ana")
    shown = await phone_shows(http, CUSTOMER, lambda s: any(m["direction"] == "out" for m in s))
    answer = next(m for m in shown if m["direction"] == "out")

    assert (await _write(http, location="38.7223,-9.1393")).status_code == 200
    reacted = await _write(http, reaction="👍", toMessage=answer["id"])
    assert reacted.status_code == 200, reacted.text

    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()["messages"]
    assert [m["kind"] for m in shown] == ["text", "text", "location"]  # no reaction line
    assert shown[1]["reactions"] == {"customer": "👍"}
    assert shown[2]["location"]["latitude"] == 38.7223
    history = await _history(http, token, conversation)
    by_type = {message["type"]: message for message in history}
    assert by_type["LOCATION"]["location"] == {"latitude": 38.7223, "longitude": -9.1393}
    replied = next(m for m in history if m["waMessageId"] == answer["id"])
    assert replied["reactions"] == [{"emoji": "👍", "fromContact": True}]

    assert (await _write(http, reaction="", toMessage=answer["id"])).status_code == 200
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()["messages"]
    assert shown[1]["reactions"] == {}


async def test_the_business_sends_an_image_a_document_and_a_reaction(
    http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given a customer's message in the inbox,
    when the business sends an image, a PDF and reacts ❤️ to the customer's message,
    then the phone shows the image (served), the PDF by its name (not served) and ❤️."""
    written = await _write(http, text="Hi")
    assert written.status_code == 200, written.text
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = (await inbox_conversation(http, token, CUSTOMER[1:]))["id"]
    ids = []
    for content, name, kind in ((PNG, "photo.png", "image/png"), (PDF, "menu.pdf", PDF_TYPE)):
        uploaded = await upload_media(http, token, content, name, kind)
        ids.append(uploaded.json()["data"]["uploadMedia"]["id"])
    sent = await send_media(http, token, conversation, ids[0], caption="your photo")
    assert "errors" not in sent.json(), sent.text
    assert "errors" not in (await send_media(http, token, conversation, ids[1])).json()
    history = await _history(http, token, conversation)
    hi_id = next(m["id"] for m in history if m["waMessageId"] == written.json()["id"])
    reacted = await gql(http, token, REACT, {"input": {"messageId": hi_id, "emoji": "❤️"}})
    assert "errors" not in reacted.json(), reacted.text

    shown = await phone_shows(
        http, CUSTOMER, lambda s: len(s) == 3 and "business" in s[0]["reactions"]
    )
    hi, image, document = (next(m for m in shown if m["kind"] == k) for k in KINDS)
    assert hi["reactions"] == {"business": "❤️"}
    assert (image["kind"], image["text"], image["media"]["mimeType"]) == (
        "image",
        "your photo",
        "image/png",
    )
    assert (await http.get(image["media"]["url"])).content == PNG
    assert (document["kind"], document["media"]["filename"]) == ("document", "menu.pdf")
    assert document["media"]["url"] is None
    assert (await http.get(f"/sandbox/media/{document['media']['id']}")).status_code == 404


KINDS = ("text", "image", "document")
PDF = b"%PDF-1.4\n" + b"0" * 64 + b"\n%%EOF\n"
PDF_TYPE = "application/pdf"


@pytest.mark.parametrize(
    "content",
    [
        {"image": "123456"},  # no file the sandbox holds
        {"image": 123},
        {"image": "HELD", "caption": "x" * 1025},  # a caption is never cut
        {"location": "lisbon"},
        {"location": "91,0"},
        {"reaction": "👍"},  # reacting to nothing
        {"reaction": "👍", "toMessage": "wamid.not-on-this-phone"},
        {"reaction": "👍" * 20, "toMessage": "wamid.x"},
        {"text": "Hi", "location": "38.7,-9.1"},  # one thing at a time
        {},
    ],
)
async def test_bad_content_is_refused_and_nothing_is_sent(
    http: httpx.AsyncClient, demo_workspace: Demo, content: dict[str, Any]
) -> None:
    if content.get("image") == "HELD":
        content = {**content, "image": await _held(http)}
    response = await _write(http, **content)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BAD_REQUEST"
    shown = (await http.get("/sandbox/messages", params={"phone": CUSTOMER})).json()
    assert shown["messages"] == []


async def test_an_image_the_sandbox_does_not_hold_is_not_found(http: httpx.AsyncClient) -> None:
    assert (await http.get("/sandbox/media/123456")).status_code == 404


async def test_a_rebound_name_cannot_read_a_held_image(http: httpx.AsyncClient) -> None:
    media_id = await _held(http)
    response = await http.get(f"/sandbox/media/{media_id}", headers={"Host": "rebind.example"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"
