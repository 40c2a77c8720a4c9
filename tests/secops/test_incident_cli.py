"""`weflux incident open|notify|list|close` as the operator runs them, exit codes included."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.smtp import running_server
from weflux.cli import main
from weflux.config import generate_encryption_key_entry
from weflux.ids import encode_global_id, parse_global_id
from weflux.models import Organization

pytestmark = pytest.mark.usefixtures("dialect")


@pytest.fixture
def operator_env(
    database_urls: DatabaseUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's environment: the test's database, as its owner, and no real mail."""
    for name, value in {
        "ENV": "test",
        "DATABASE_URL": database_urls.app,
        "DATABASE_MIGRATION_URL": database_urls.owner,
        "JWT_SECRET": "test-jwt-secret-" + "x" * 32,
        "ENCRYPTION_KEYS": generate_encryption_key_entry("test1"),
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_FORMAT": "console",
    }.items():
        monkeypatch.setenv(f"WEFLUX_{name}", value)


async def weflux(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command (in a thread: it runs its own event loop); exit code, out, err."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def message_file(tmp_path: Path) -> str:
    path = tmp_path / "notice.txt"
    path.write_text("Dear Admin,\n\nwe found an intrusion. Details follow.\n")
    return str(path)


@pytest.mark.usefixtures("operator_env")
async def test_an_incident_from_discovery_to_notice_to_post_mortem(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    org: Organization,
    admin: Actor,
) -> None:
    discovered = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    workspace = encode_global_id("Organization", org.id)
    code, out, _ = await weflux(
        capsys, "incident", "open", "--title", "Token leak", "--discovered-at", discovered,
        "--workspace", workspace,
    )  # fmt: skip
    assert code == 0
    incident_id = out.strip()
    assert parse_global_id(incident_id)[0] == "Incident"

    code, out, _ = await weflux(capsys, "incident", "list")
    assert code == 0
    assert "Token leak" in out
    assert "OVERDUE" not in out

    with running_server() as (handler, port):
        monkeypatch.setenv("WEFLUX_SMTP_URL", f"smtp://127.0.0.1:{port}")
        monkeypatch.setenv("WEFLUX_SMTP_FROM", "security@weflux.example")
        notify = ("incident", "notify", incident_id, "--message-file", message_file(tmp_path))
        code, out, _ = await weflux(capsys, *notify)
        assert code == 0
        assert "notified 1 Admin(s); 0 told before" in out
        code, out, _ = await weflux(capsys, *notify)  # re-run: nobody twice
        assert code == 0
        assert "notified 0 Admin(s); 1 told before" in out
    assert [mail.rcpt_tos for mail in handler.delivered] == [[admin.user.email]]
    assert b"we found an intrusion" in handler.delivered[0].content

    url = "https://status.example/post-mortems/1"
    code, out, _ = await weflux(capsys, "incident", "close", incident_id, "--post-mortem-url", url)
    assert code == 0
    code, out, _ = await weflux(capsys, "incident", "list")
    assert code == 0
    assert "CLOSED" in out
    assert url in out


@pytest.mark.usefixtures("operator_env")
async def test_list_exits_1_while_a_notice_or_post_mortem_is_overdue(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    org: Organization,
    admin: Actor,
) -> None:
    """Time travel by discovery date: found 15 days ago, nobody told, nothing published."""
    discovered = (datetime.now(UTC) - timedelta(days=15)).isoformat()
    code, out, _ = await weflux(
        capsys, "incident", "open", "--title", "Old breach", "--discovered-at", discovered,
        "--workspace", encode_global_id("Organization", org.id),
    )  # fmt: skip
    incident_id = out.strip()

    code, out, _ = await weflux(capsys, "incident", "list")
    assert code == 1
    assert "NOTICE OVERDUE, POST-MORTEM OVERDUE" in out

    with running_server() as (_, port):
        monkeypatch.setenv("WEFLUX_SMTP_URL", f"smtp://127.0.0.1:{port}")
        monkeypatch.setenv("WEFLUX_SMTP_FROM", "security@weflux.example")
        notify = ("incident", "notify", incident_id, "--message-file", message_file(tmp_path))
        assert (await weflux(capsys, *notify))[0] == 0
    code, out, _ = await weflux(capsys, "incident", "list")
    assert code == 1
    assert "NOTICE OVERDUE" not in out
    assert "POST-MORTEM OVERDUE" in out

    close = ("incident", "close", incident_id, "--post-mortem-url", "https://status.example/pm")
    assert (await weflux(capsys, *close))[0] == 0
    assert (await weflux(capsys, "incident", "list"))[0] == 0


@pytest.mark.usefixtures("operator_env")
async def test_open_refuses_what_is_not_a_workspace_id(
    capsys: pytest.CaptureFixture[str], org: Organization
) -> None:
    member_id = encode_global_id("Member", org.id)
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal
        main(["incident", "open", "--title", "x", "--discovered-at", "2026-12-01T00:00:00Z",
              "--workspace", member_id])  # fmt: skip
    assert exited.value.code == 2
    assert "argument --workspace: `" + member_id + "` is not the id of an Organization" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exited:
        main(["incident", "open", "--title", "x", "--discovered-at", "2026-12-01T00:00:00",
              "--workspace", str(org.id)])  # fmt: skip
    assert exited.value.code == 2
    assert "time zone" in capsys.readouterr().err
