"""`weflux serve` and `weflux migrate` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.children import STARTUP, child_env, spawn, stop, wait_ready, weflux_serve
from tests.fixtures.databases import DatabaseUrls, SqliteTemplate
from tests.fixtures.live import free_port


def test_serve_on_embedded_defaults_answers_healthz(tmp_path: Path) -> None:
    """What `make run` does on a fresh checkout: no database or Redis configured."""
    port = free_port()
    process = spawn(weflux_serve(port), tmp_path, child_env())
    try:
        assert wait_ready(port, "/healthz", process, STARTUP) == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        output = stop(process)
    assert (tmp_path / "var" / "weflux.db").is_file()
    assert b"admin@demo.weflux.test" in output
    assert (tmp_path / "var" / "demo-logins.txt").is_file()
    assert (tmp_path / "var" / "dev-secrets.json").stat().st_mode & 0o077 == 0
    secrets = json.loads((tmp_path / "var" / "dev-secrets.json").read_text())
    # Once, though the settings are read twice here (the command, then the app factory).
    assert output.decode().count("generated development secrets") == 1, output.decode()
    for value in secrets.values():
        assert value.split(":")[-1] not in output.decode()
    # A first start says nothing that alarms or misleads: no SQLAlchemy warning from the
    # migrations, no word of other servers (this one reads the demo number itself).
    assert b"Warning" not in output, output.decode()
    assert b"the servers see the numbers" not in output, output.decode()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_migrate_and_serve_on_postgres(database_urls: DatabaseUrls, tmp_path: Path) -> None:
    env = child_env(
        WEFLUX_ENV="test",
        WEFLUX_DATABASE_URL=database_urls.app,
        WEFLUX_DATABASE_MIGRATION_URL=database_urls.owner,
        WEFLUX_JWT_SECRET="x" * 40,
        WEFLUX_ENCRYPTION_KEYS="k1:" + "A" * 43 + "=",
    )
    migrated = subprocess.run(
        [sys.executable, "-m", "weflux", "migrate"], cwd=tmp_path, env=env, capture_output=True
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    port = free_port()
    process = spawn(weflux_serve(port), tmp_path, env)
    try:
        assert wait_ready(port, "/readyz", process, STARTUP) == 200
    finally:
        stop(process)


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("dialect", ["postgresql"])
def test_production_refuses_a_superuser_database_role(
    database_urls: DatabaseUrls, tmp_path: Path, command: str
) -> None:
    """Given production settings whose WEFLUX_DATABASE_URL is the tables' owner,
    when `weflux serve` (or `weflux worker`: before, it ran as that role) starts,
    then it exits 2 with one `configuration error:` line naming the variable and what
    to connect as."""
    env = child_env(
        WEFLUX_ENV="production",
        WEFLUX_DATABASE_URL=database_urls.owner,
        WEFLUX_JWT_SECRET="x" * 40,
        WEFLUX_ENCRYPTION_KEYS="k1:" + "A" * 43 + "=",
        WEFLUX_SMTP_URL="smtps://mailer:secret@smtp.example.com",
        WEFLUX_SMTP_FROM="no-reply@example.com",
        WEFLUX_APP_URL="https://app.example",
    )
    port = free_port()
    line = weflux_serve(port) if command == "serve" else [sys.executable, "-m", "weflux", "worker"]
    process = spawn(line, tmp_path, env)
    try:
        process.wait(timeout=STARTUP)
    finally:
        output = stop(process)
    assert process.returncode == 2
    assert b"row-level security does not apply" in output
    # Refused before uvicorn starts, as a configuration error; not as a lifespan traceback.
    assert b"configuration error: WEFLUX_DATABASE_URL connects as" in output, output.decode()
    assert b"Traceback" not in output, output.decode()


def test_serve_from_another_directory_keeps_its_state_in_the_var_dir(tmp_path: Path) -> None:
    """Given WEFLUX_VAR_DIR pointing away from the working directory and no database URL,
    when `weflux serve` starts (development: it migrates and creates the demo),
    then it answers, and the database, secrets and demo logins are all in the var dir,
    nothing in the working directory."""
    elsewhere, state = tmp_path / "elsewhere", tmp_path / "state"
    elsewhere.mkdir()
    port = free_port()
    process = spawn(weflux_serve(port), elsewhere, child_env(WEFLUX_VAR_DIR=str(state)))
    try:
        assert wait_ready(port, "/readyz", process, STARTUP) == 200
        login = httpx.post(
            f"http://127.0.0.1:{port}/auth/login",
            json={"email": "admin@demo.weflux.test", "password": _demo_password(state)},
        )
        assert login.status_code == 200, login.text
    finally:
        stop(process)
    assert sorted(p.name for p in state.iterdir()) >= ["demo-logins.txt", "dev-secrets.json"]
    assert (state / "weflux.db").is_file()
    assert list(elsewhere.iterdir()) == []


def _demo_password(var_dir: Path) -> str:
    for line in (var_dir / "demo-logins.txt").read_text().splitlines():
        if "admin@demo.weflux.test" in line:
            return line.split()[-1]
    raise AssertionError("no demo admin login")


def test_backup_commands_create_verify_and_prune_and_exit_1_on_a_bad_file(
    sqlite_template: SqliteTemplate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`weflux backup create` writes into WEFLUX_BACKUP_DIR; `verify` exits 1 on a file
    it cannot open, with the reason on stderr; `prune` keeps what is young."""
    from weflux.cli import main
    from weflux.config import generate_encryption_key_entry

    urls = sqlite_template.clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": urls.app,
        "WEFLUX_BACKUP_KEYS": generate_encryption_key_entry("cli1"),
        "WEFLUX_BACKUP_DIR": str(tmp_path / "backups"),
        "WEFLUX_LOG_FORMAT": "console",
    }.items():
        monkeypatch.setenv(name, value)

    assert main(["backup", "create"]) == 0
    (path,) = (tmp_path / "backups").glob("*.wfxbak")
    assert f"wrote {path}" in capsys.readouterr().out
    assert main(["backup", "verify", str(path)]) == 0
    assert "key `cli1`" in capsys.readouterr().out
    # Into the database it came from (not empty): refused, and nothing written, so no word
    # of servers seeing written numbers.
    assert main(["backup", "restore", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error: the target database is not empty" in err
    assert "numbers written here" not in err

    monkeypatch.setenv("WEFLUX_BACKUP_KEYS", generate_encryption_key_entry("cli2"))
    assert main(["backup", "verify", str(path)]) == 1
    assert "error: the backup was sealed with key `cli1`" in capsys.readouterr().err
    assert main(["backup", "prune"]) == 0
    assert "0 backup file(s) deleted" in capsys.readouterr().out
    assert path.exists()


def test_production_refuses_the_demo_and_its_sandbox_channel(tmp_path: Path) -> None:
    """Given production settings, when `weflux demo` runs, then it refuses (exit 2) before
    touching any database, naming why: the demo's number is a sandbox channel."""
    env = child_env(
        WEFLUX_ENV="production",
        WEFLUX_DATABASE_URL="postgresql+asyncpg://app@db.invalid/weflux?ssl=require",
        WEFLUX_JWT_SECRET="x" * 40,
        WEFLUX_ENCRYPTION_KEYS="k1:" + "A" * 43 + "=",
        WEFLUX_SMTP_URL="smtps://mailer:secret@smtp.example.com",
        WEFLUX_SMTP_FROM="no-reply@example.com",
        WEFLUX_APP_URL="https://app.example",
    )
    result = subprocess.run(
        [sys.executable, "-m", "weflux", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"sandbox channel" in result.stderr


async def _store_parked(url: str) -> str:
    from weflux.db import Database
    from weflux.models import WebhookEvent, WebhookEventStatus

    db = Database(url)
    row = WebhookEvent(
        body=b"{}", body_sha256="0" * 64, status=WebhookEventStatus.PARKED, attempts=12
    )
    try:
        async with db.session(webhook_event=row.id) as session:
            session.add(row)
    finally:
        await db.dispose()
    return str(row.id)


def test_webhooks_failed_exits_1_while_an_event_is_parked_until_replayed(
    sqlite_template: SqliteTemplate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`weflux webhooks failed` exits 1 while any stored event is parked (as `weflux
    incident list` does while a notice is overdue), so monitoring can run it;
    `replay --parked` processes the parked ones, and the list exits 0 again;
    `replay --event` takes one id, and says so when it names no event."""
    import asyncio
    import uuid

    from weflux.cli import main

    urls = sqlite_template.clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": urls.app,
        "WEFLUX_LOG_FORMAT": "console",
    }.items():
        monkeypatch.setenv(name, value)

    assert main(["webhooks", "failed"]) == 0
    assert "0 parked" in capsys.readouterr().out
    event_id = asyncio.run(_store_parked(urls.app))
    assert main(["webhooks", "failed"]) == 1
    out = capsys.readouterr().out
    assert f"{event_id}  " in out
    assert "PARKED  attempts=12" in out
    assert "1 parked (no more automatic retries: weflux webhooks replay --parked)" in out

    assert main(["webhooks", "replay", "--event", str(uuid.uuid4())]) == 1
    assert "no stored webhook event" in capsys.readouterr().err
    assert main(["webhooks", "replay", "--parked"]) == 0
    assert "replayed 1 event(s), 0 failed" in capsys.readouterr().out
    assert main(["webhooks", "failed"]) == 0
    assert "0 parked, 0 retrying" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["incident", "open", "--title", "T", "--discovered-at", "2026-12-01T00:00:00Z",
             "--workspace", "notanid"],
            "argument --workspace: `notanid` is not the id of an Organization",
        ),
        (
            ["incident", "open", "--title", "T", "--discovered-at", "2026-12-01T00:00:00Z",
             "--workspace", "TWVtYmVyOjAxYTI0YTM0LTdlMWQtNzkwZi05YTcwLTMxMTI3Nzc3YWI1Yw"],
            "is not the id of an Organization",  # a Member's global id
        ),
        (
            ["incident", "notify", "notanid", "--message-file", "notice.txt"],
            "argument id: `notanid` is not the id of an Incident",
        ),
        (
            ["incident", "close", "notanid", "--post-mortem-url", "https://status.example/pm"],
            "argument id: `notanid` is not the id of an Incident",
        ),
        (
            ["webhooks", "replay", "--event", "not-an-id"],
            "argument --event: `not-an-id` is not an id",
        ),
        (
            ["webhooks", "replay", "--since", "yesterday"],
            "argument --since: `yesterday` is neither an ISO time nor a duration",
        ),
    ],
    ids=["open-not-an-id", "open-a-member-id", "notify", "close", "replay-event", "replay-since"],
)  # fmt: skip
def test_an_argument_that_is_not_an_id_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    """Given a command taking an id (or a time), when it is given something else,
    then argparse refuses it with its usage and exit code 2, naming the argument and what
    it wants, before any setting is read: not a "configuration error", nor a traceback."""
    from weflux.cli import main

    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("WEFLUX_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert said in err
    assert "usage: weflux" in err
    assert "configuration error" not in err
    assert not (tmp_path / "var").exists()  # no settings read, no secrets generated


# Commands that log at start: `migrate` sets logging up first (as `serve` does); `simulate`
# (here without a demo channel to write as: it says so and exits 2) did not set it up.
STARTS = {"migrate": (["migrate"], 0), "simulate": (["simulate", "quality", "--rating", "RED"], 2)}


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("command", list(STARTS))
def test_the_generated_secrets_warning_at_start_is_in_the_configured_format(
    sqlite_template: SqliteTemplate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    command: str,
) -> None:
    """Given development without secrets configured (they are generated) and a log format,
    when a command starts, then its first line, the generated secrets' warning, is in that
    format like every other log line."""
    from weflux.cli import main

    urls = sqlite_template.clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("WEFLUX_")]:
        monkeypatch.delenv(name)
    for name, value in {
        "WEFLUX_ENV": "development",
        "WEFLUX_DATABASE_URL": urls.app,
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        "WEFLUX_LOG_FORMAT": fmt,
    }.items():
        monkeypatch.setenv(name, value)
    argv, code = STARTS[command]
    assert main(argv) == code
    lines = capsys.readouterr().err.splitlines()
    assert "using generated development secrets" in lines[0], lines
    if fmt == "console":
        assert lines[0].startswith("WARNING weflux.config: using generated"), lines
        assert not [line for line in lines if line.startswith("{")], lines
    else:
        assert json.loads(lines[0])["level"] == "warning", lines
