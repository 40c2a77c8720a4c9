"""`weflux demo`: a first-run workspace whose logins work."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import httpx
import pytest

from tests.fixtures.api import gql, login
from weflux.cli import main


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_demo_prints_three_logins_that_work(
    client: httpx.AsyncClient,
    database_urls: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_DATABASE_URL", database_urls.app)  # type: ignore[attr-defined]
    monkeypatch.setenv("WEFLUX_LOG_FORMAT", "console")
    assert await asyncio.to_thread(main, ["demo"]) == 0
    printed = capsys.readouterr().out
    logins = re.findall(r"(ADMIN|MANAGER|AGENT)\s+(\S+@demo\.weflux\.test)\s+(\S+)", printed)
    assert [role for role, _, _ in logins] == ["ADMIN", "MANAGER", "AGENT"]
    kept = tmp_path / "var" / "demo-logins.txt"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    inbox = """{ viewer { role } whatsAppAccounts { status }
      conversations { edges { node { id } } } }"""
    for role, email, password in logins:
        response = await login(client, email, password)
        assert response.status_code == 200, response.text
        data = (await gql(client, response.json()["accessToken"], inbox)).json()["data"]
        assert data["viewer"]["role"] == role
        assert data["whatsAppAccounts"] == [{"status": "CONNECTED"}]
        # the Agent sees the unassigned conversation and the one assigned to them
        assert len(data["conversations"]["edges"]) == 2

    assert await asyncio.to_thread(main, ["demo"]) == 0
    again = capsys.readouterr().out
    assert "exists already" in again
    assert logins[0][2] not in again
