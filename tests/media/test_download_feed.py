"""A downloaded (or failed) inbound file moves its message in the change feed, which is
what `messageUpdated` reads: a subscriber sees `downloadPath` (or `failure`) appear."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import pytest

from tests.fixtures.api import gql, token_for
from tests.fixtures.factories import Actor
from tests.fixtures.media import MediaInbox
from weflux.ids import encode_global_id
from weflux.pagination import decode_update_cursor

MESSAGE = """
query($id: ID!) { node(id: $id) { ... on Message { updateCursor media { downloadPath failure } } } }
"""
JPEG = b"\xff\xd8\xff" + b"x" * 5000


async def _read(inbox: MediaInbox, token: str, message_id: uuid.UUID) -> tuple[int, dict[str, Any]]:
    body = (
        await gql(inbox.client, token, MESSAGE, {"id": encode_global_id("Message", message_id)})
    ).json()
    node = body["data"]["node"]
    return decode_update_cursor(node["updateCursor"]), node["media"]


@pytest.mark.parametrize("outcome", ["stored", "failed"])
async def test_a_finished_download_moves_its_message_forward_in_the_feed(
    dialect: str, media_inbox: MediaInbox, admin: Actor, outcome: str
) -> None:
    """Given an inbound image whose file is not downloaded yet,
    when the worker stores it (or fails it for good: a checksum mismatch),
    then its message's `updateCursor` is further on, so `messageUpdated` (live: it reads
    the feed on each event; or resumed with `after`) delivers the message with its
    `downloadPath` (or `failure`): before, the event was published but the feed had not
    moved, and no subscriber ever received it."""
    fields: dict[str, Any] = {}
    if outcome == "failed":
        fields["sha256"] = base64.b64encode(hashlib.sha256(b"another file").digest()).decode()
    message_id = await media_inbox.receive("image", JPEG, mime_type="image/jpeg", **fields)
    token = await token_for(media_inbox.client, admin)
    before, media = await _read(media_inbox, token, message_id)
    assert media == {"downloadPath": None, "failure": None}

    await media_inbox.download()

    after, media = await _read(media_inbox, token, message_id)
    if outcome == "stored":
        assert media["downloadPath"] is not None
    else:
        assert media["failure"].startswith("Checksum mismatch")
    assert after > before
