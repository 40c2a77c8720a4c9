"""Data requests whose work kills the worker (out of memory, SIGKILL) at every attempt:
each attempt is counted before it starts, so an export is FAILED after
`EXPORT_ATTEMPTS` instead of taking the worker down at every sweep for ever, and an
erasure (which must finish) raises one alarm and goes on (weflux.lifecycle.worker).

A process's death is played by `asyncio.CancelledError` out of the work: not an
`Exception`, so nothing records an outcome, exactly as when the process is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.factories import Actor, create_contact
from tests.fixtures.principals import principal_of
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure, exports
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import EXPORT_ATTEMPTS, INTERRUPTED, Lifecycle, run_due_requests
from weflux.models import DataRequest, DataRequestStatus
from weflux.services.audit import RequestMeta


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing([("k1", os.urandom(32))])


async def _request(db: Database, org_id: uuid.UUID, request_id: uuid.UUID) -> DataRequest:
    async with db.session(org_id) as session:
        row = await session.get(DataRequest, request_id)
    assert row is not None
    return row


def _dies(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    async def killed(*_args: Any, **_kwargs: Any) -> None:
        raise asyncio.CancelledError  # the process is gone: no outcome recorded

    monkeypatch.setattr(module, name, killed)


async def _sweep_that_dies(lifecycle: Lifecycle) -> None:
    with pytest.raises(asyncio.CancelledError):
        await run_due_requests(lifecycle)


async def test_an_export_that_kills_its_worker_every_time_is_failed(
    db: Database,
    admin: Actor,
    keyring: KeyRing,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a workspace export whose build kills the worker,
    when the worker's sweep takes it again after each death,
    then each death is a counted attempt (RUNNING, `last_error` Interrupted), and the
    sweep after the fifth fails it without building it (one ERROR line), and leaves it
    alone after."""
    caplog.set_level(logging.INFO)
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.request_workspace_export(
            session, principal_of(admin), RequestMeta()
        )
    lifecycle = Lifecycle(db=db, keyring=keyring, export_dir=tmp_path / "exports")
    _dies(monkeypatch, exports, "build_export")
    for attempt in range(1, EXPORT_ATTEMPTS + 1):
        await _sweep_that_dies(lifecycle)
        row = await _request(db, admin.org_id, request.id)
        assert (row.status, row.attempts, row.last_error) == (
            DataRequestStatus.RUNNING,
            attempt,
            INTERRUPTED,
        )

    assert await run_due_requests(lifecycle) == 1
    row = await _request(db, admin.org_id, request.id)
    assert (row.status, row.attempts, row.last_error) == (
        DataRequestStatus.FAILED,
        EXPORT_ATTEMPTS,
        INTERRUPTED,
    )
    assert row.completed_at is not None
    assert await run_due_requests(lifecycle) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "data request failed: its process died in every attempt"
    ]


async def test_an_erasure_that_kills_its_worker_alarms_once_and_finishes_once_it_can(
    db: Database,
    admin: Actor,
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given a contact erasure whose purge kills the worker,
    when the sweep takes it again after each death, more times than an export gets,
    then it stays RUNNING (an erasure must finish) with one ERROR alarm; once the fault
    is gone the next sweep completes it (`last_error` cleared)."""
    caplog.set_level(logging.INFO)
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session, name="Ada")
    async with db.session(admin.org_id) as session:
        request = await lifecycle_requests.erase_contact(
            session, principal_of(admin), RequestMeta(), contact_id=contact.id
        )
    lifecycle = Lifecycle(db=db, keyring=keyring)
    with monkeypatch.context() as patched:
        _dies(patched, erasure, "purge_contact")
        for _ in range(EXPORT_ATTEMPTS + 2):
            await _sweep_that_dies(lifecycle)
    row = await _request(db, admin.org_id, request.id)
    assert (row.status, row.attempts, row.last_error) == (
        DataRequestStatus.RUNNING,
        EXPORT_ATTEMPTS + 2,
        INTERRUPTED,
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "data request keeps interrupting its worker; retried at every sweep"
    ]

    assert await run_due_requests(lifecycle) == 1
    row = await _request(db, admin.org_id, request.id)
    assert (row.status, row.last_error) == (DataRequestStatus.COMPLETED, None)
