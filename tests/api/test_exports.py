"""GET /exports/{id}: the file for Admins of its workspace; 404 for everyone else."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta

import httpx
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.inbox import Api, gid
from tests.fixtures.logs import capture_logs
from tests.fixtures.two_factor import enroll, require_two_factors
from weflux.db import Database
from weflux.ids import decode_global_id
from weflux.lifecycle.worker import Lifecycle, destroy_expired_exports, run_due_requests
from weflux.models import DataRequest, utcnow
from weflux.runtime import runtime_of

EXPORT = "mutation($id: ID!) { exportContactData(contactId: $id) { id status downloadPath } }"
REQUESTS = "{ dataRequests { edges { node { id status downloadPath expiresAt progress } } } }"


async def test_only_admins_of_the_workspace_download_an_export(
    app: Starlette,
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    admin: Actor,
    manager: Actor,
    other_admin: Actor,
) -> None:
    """Given a contact export requested by an Admin,
    when it is downloaded before it is built, by the Admin once built, by a Manager, by
    an Admin of another workspace, without a token, and after it expired,
    then only the Admin of the workspace gets the zip (with the contact's messages);
    everyone else 404 (401 without a token)."""
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
        await create_message(session, conversation, text="my words")
    body = await api(admin, EXPORT, {"id": gid("Contact", conversation.contact_id)})
    request_id = body["data"]["exportContactData"]["id"]
    assert body["data"]["exportContactData"]["downloadPath"] is None
    path = f"/exports/{request_id}"

    async def get(actor: Actor | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {await api.token(actor)}"} if actor else {}
        return await client.get(path, headers=headers)

    assert (await get(admin)).status_code == 404  # not built yet
    runtime = runtime_of(app)
    lifecycle = Lifecycle(
        db=db, keyring=runtime.keyring, export_dir=runtime.settings.export_directory
    )
    await run_due_requests(lifecycle)
    listed = await api(admin, REQUESTS)
    node = listed["data"]["dataRequests"]["edges"][0]["node"]
    assert (node["status"], node["downloadPath"], node["progress"]) == ("COMPLETED", path, 1.0)

    response = await get(admin)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    texts = [json.loads(line)["text"] for line in archive.read("messages.jsonl").splitlines()]
    assert texts == ["my words"]
    assert (await get(manager)).status_code == 404
    assert (await get(other_admin)).status_code == 404
    assert (await get(None)).status_code == 401
    assert (
        await client.get(
            "/exports/not-an-id", headers={"Authorization": f"Bearer {await api.token(admin)}"}
        )
    ).status_code == 404

    await destroy_expired_exports(lifecycle, now=utcnow() + timedelta(hours=25))
    assert (await get(admin)).status_code == 404


async def test_download_path_is_null_once_the_file_may_no_longer_be_downloaded(
    app: Starlette, client: httpx.AsyncClient, api: Api, db: Database, admin: Actor
) -> None:
    """Given two built exports (a contact's and the workspace's),
    when the first's `expiresAt` passes and another contact is erased (which withdraws
    the workspace export at once), both before the worker's next sweep destroys the files,
    then `dataRequests` shows neither `downloadPath` (a client never offers a link that
    answers 404), and each `expiresAt` is in the past."""
    async with db.session(admin.org_id) as session:
        kept = await create_conversation(session)
        erased = await create_conversation(session)
    contact_export = await api(admin, EXPORT, {"id": gid("Contact", kept.contact_id)})
    workspace_export = await api(admin, "mutation { requestWorkspaceExport { id } }")
    runtime = runtime_of(app)
    await run_due_requests(
        Lifecycle(db=db, keyring=runtime.keyring, export_dir=runtime.settings.export_directory)
    )
    listed = await api(admin, REQUESTS)
    assert all(e["node"]["downloadPath"] for e in listed["data"]["dataRequests"]["edges"])

    contact_request = decode_global_id(
        contact_export["data"]["exportContactData"]["id"], "DataRequest"
    )
    async with db.session(admin.org_id) as session:
        row = await session.get(DataRequest, contact_request)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    erasure = await api(
        admin,
        "mutation($id: ID!) { eraseContact(contactId: $id) { id } }",
        {"id": gid("Contact", erased.contact_id)},
    )
    assert "errors" not in erasure, erasure

    listed = await api(admin, REQUESTS)
    nodes = {e["node"]["id"]: e["node"] for e in listed["data"]["dataRequests"]["edges"]}
    for request in (
        contact_export["data"]["exportContactData"]["id"],
        workspace_export["data"]["requestWorkspaceExport"]["id"],
    ):
        assert nodes[request]["downloadPath"] is None
        assert datetime.fromisoformat(nodes[request]["expiresAt"]) <= utcnow()
        path = f"/exports/{request}"
        headers = {"Authorization": f"Bearer {await api.token(admin)}"}
        assert (await client.get(path, headers=headers)).status_code == 404


async def test_an_admin_who_must_enroll_in_two_factors_gets_no_export(
    app: Starlette, client: httpx.AsyncClient, api: Api, db: Database, admin: Actor
) -> None:
    """Given a built export, and a workspace that now requires two factors of the Admin,
    who has none yet (they may log in, but only to enroll),
    when they download it,
    then 403 TWO_FACTOR_REQUIRED without the file, as every GraphQL operation but
    enrolling answers; once enrolled, the same token gets the zip."""
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
    body = await api(admin, EXPORT, {"id": gid("Contact", conversation.contact_id)})
    path = f"/exports/{body['data']['exportContactData']['id']}"
    runtime = runtime_of(app)
    await run_due_requests(
        Lifecycle(db=db, keyring=runtime.keyring, export_dir=runtime.settings.export_directory)
    )
    await require_two_factors(db, admin.org_id)
    token = await token_for(client, admin)

    refused = await client.get(path, headers={"Authorization": f"Bearer {token}"})

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "TWO_FACTOR_REQUIRED"
    await enroll(client, token)
    served = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/zip"


async def test_an_export_the_disk_fails_to_read_is_503_upstream_unavailable(
    app: Starlette, client: httpx.AsyncClient, api: Api, db: Database, admin: Actor
) -> None:
    """Given a built export whose file then fails mid-read with EIO (/proc/self/mem in
    its place),
    when the Admin downloads it,
    then 503 UPSTREAM_UNAVAILABLE with Retry-After, not a cut 200, and a warning naming
    the export store and the error's class; the file back in place is served again."""
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
    body = await api(admin, EXPORT, {"id": gid("Contact", conversation.contact_id)})
    path = f"/exports/{body['data']['exportContactData']['id']}"
    runtime = runtime_of(app)
    directory = runtime.settings.export_directory
    await run_due_requests(Lifecycle(db=db, keyring=runtime.keyring, export_dir=directory))
    [stored] = [p for p in directory.rglob("*") if p.is_file()]
    kept = stored.read_bytes()
    stored.unlink()
    stored.symlink_to("/proc/self/mem")
    headers = {"Authorization": f"Bearer {await api.token(admin)}"}

    with capture_logs() as logs:
        response = await client.get(path, headers=headers)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    [warning] = [
        entry
        for entry in map(json.loads, logs.lines)
        if entry["msg"] == "the export store is unavailable"
    ]
    assert (warning["level"], warning["store"], warning["error"]) == (
        "warning",
        "exports",
        "OSError",
    )
    stored.unlink()
    stored.write_bytes(kept)
    served = await client.get(path, headers=headers)
    assert served.headers["content-type"] == "application/zip"
