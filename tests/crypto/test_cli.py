"""`weflux keys generate` and `weflux keys rotate`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.settings import make_settings
from weflux.auth import recovery_codes, totp
from weflux.cli import _rotate_keys, main
from weflux.config import Settings, generate_encryption_key_entry, parse_encryption_keys
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Organization, User, WhatsAppAccount, utcnow

# The checkout, for the child process to import `weflux` and `tests` from.
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_generate_prints_an_entry_that_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate"]) == 0
    out = capsys.readouterr().out.strip()
    [(kid, key)] = parse_encryption_keys(out)
    assert len(key) == 32
    assert out.startswith(f"{kid}:")


def test_generate_with_a_key_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--kid", "prod-2027.1"]) == 0
    captured = capsys.readouterr()
    [(kid, _)] = parse_encryption_keys(captured.out.strip())
    assert kid == "prod-2027.1"
    assert "weflux keys rotate" in captured.err
    assert captured.out.strip() not in captured.err


def test_generate_gives_a_new_key_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    main(["keys", "generate", "--kid", "a"])
    main(["keys", "generate", "--kid", "a"])
    first, second = capsys.readouterr().out.split()
    assert first != second


@pytest.mark.parametrize("kid", ["bad kid", "a:b", "x" * 33, ""])
def test_generate_refuses_a_bad_key_id(kid: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["keys", "generate", "--kid", kid])
    assert exit_.value.code == 2
    assert "--kid" in capsys.readouterr().err


async def _run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "weflux",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_rotate_reports_counts_and_fails_on_undecryptable_values(
    db: Database, database_urls: DatabaseUrls, org: Organization, tmp_path: Path
) -> None:
    old_entry = generate_encryption_key_entry("old")
    new_entry = generate_encryption_key_entry("new")
    old_ring = KeyRing(parse_encryption_keys(old_entry))
    lost_ring = KeyRing(parse_encryption_keys(generate_encryption_key_entry("lost")))
    async with db.session(org.id) as session:
        for n, ring in enumerate([old_ring, old_ring, lost_ring]):
            account = WhatsAppAccount(
                org_id=org.id,
                display_phone_number="+1 555 0100",
                phone_number_id=f"cli-{n}",
                business_account_id="waba-cli",
                webhook_key=f"cli-hook-{n}",
                credentials_updated_at=utcnow(),
            )
            seal(ring, account, "access_token_enc", f"cli-token-{n}-abcdef")
            session.add(account)

    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        # Rotation crosses workspaces: maintenance, as the schema owner (issue 9, item 13).
        "WEFLUX_DATABASE_MIGRATION_URL": database_urls.owner,
        "WEFLUX_ENCRYPTION_KEYS": f"{new_entry},{old_entry}",
        "WEFLUX_JWT_SECRET": "cli-test-jwt-secret-" + "x" * 32,
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    code, out, err = await _run_cli("keys", "rotate", "--batch-size", "2", env=env, cwd=tmp_path)
    assert code == 1, err
    assert out.strip() == "scanned 3, rotated 2, already current 0, failed 1"
    assert "left unchanged" in err
    for secret in ("cli-token-", new_entry.split(":")[1], old_entry.split(":")[1]):
        assert secret not in out + err

    code, out, _ = await _run_cli("keys", "rotate", env=env, cwd=tmp_path)
    assert code == 1
    assert out.strip() == "scanned 3, rotated 0, already current 2, failed 1"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_rotate_exits_0_when_every_value_is_current(
    db: Database, database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_ENCRYPTION_KEYS": generate_encryption_key_entry("only"),
        "WEFLUX_JWT_SECRET": "cli-test-jwt-secret-" + "x" * 32,
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    code, out, err = await _run_cli("keys", "rotate", env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == "scanned 0, rotated 0, already current 0, failed 0"


async def test_rotate_says_which_old_keys_recovery_codes_still_need(
    db: Database,
    database_urls: DatabaseUrls,
    admin: Actor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Given recovery codes stored under the old key, when keys rotate, then it succeeds
    and says to keep that key; with the old key dropped, it fails: the codes cannot be
    verified any more."""
    old_entry = generate_encryption_key_entry("old")
    new_entry = generate_encryption_key_entry("new")
    async with db.session(admin.org_id) as session:
        user = await session.get(User, admin.user.id)
        assert user is not None
        ring = KeyRing(parse_encryption_keys(old_entry))
        user.recovery_code_hashes = recovery_codes.stored_form(
            ring, user.id, totp.new_recovery_codes()
        )

    def settings(keys: str) -> Settings:
        return make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            encryption_keys=keys,
        )

    assert await _rotate_keys(settings(f"{new_entry},{old_entry}"), batch_size=10) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("; 10 recovery code(s) still need key(s) old")
    assert "keep key(s) old in WEFLUX_ENCRYPTION_KEYS" in captured.err

    assert await _rotate_keys(settings(new_entry), batch_size=10) == 1
    assert "10 recovery code(s) cannot be verified" in capsys.readouterr().err
