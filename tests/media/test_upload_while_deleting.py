"""uploadMedia while the workspace's deletion is requested: the file is stored without a
database connection, and the upload commits before the deletion or not at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures.api import token_for
from tests.fixtures.deletion import request_deletion
from tests.fixtures.factories import Actor
from tests.fixtures.media import JPEG, MediaInbox, media_rows, upload_media
from weflux.auth.permissions import DELETING_WORKSPACE_MESSAGE
from weflux.db import Database


async def test_a_deletion_requested_while_an_upload_stores_its_file_refuses_the_upload(
    media_inbox: MediaInbox, db: Database, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an Admin's upload whose file is being stored, when the workspace's deletion is
    requested meanwhile, then the request does not wait for it, and the upload answers
    FORBIDDEN with no file row: it is checked just before its commit (PostgreSQL: under
    the workspace's deletion lock). No database connection is held while the file is
    stored: the lock taken at the upload's start held one throughout (seconds for a large
    file), and as many uploads at once as the pool's connections each waited for a second
    one (the file's intent), every request of the process waiting with them."""
    runtime = media_inbox.runtime
    store = runtime.channel_services.media
    assert store is not None
    put = store.put
    held: list[int] = []

    async def put_while_deleting(key: str, path: Path) -> None:
        await put(key, path)
        if not held:
            held.append(runtime.db.engine.pool.checkedout())  # type: ignore[attr-defined]
            if held == [0]:  # else the request would wait for the upload: not tried
                await asyncio.wait_for(request_deletion(media_inbox.app, db, admin), 30)

    monkeypatch.setattr(store, "put", put_while_deleting)
    token = await token_for(media_inbox.client, admin)

    uploaded = await upload_media(media_inbox.client, token, JPEG, "a.jpg", "image/jpeg")

    assert held == [0]
    assert [(e["message"], e["extensions"]["code"]) for e in uploaded.json()["errors"]] == [
        (DELETING_WORKSPACE_MESSAGE, "FORBIDDEN")
    ]
    assert await media_rows(media_inbox) == set()
