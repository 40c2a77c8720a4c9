"""Configuration: durations, development secrets, production refusals."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from weflux.cli import main
from weflux.config import (
    ConfigError,
    generate_encryption_key_entry,
    load_settings,
    parse_duration,
    parse_encryption_keys,
)

STRONG = "s" * 48


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_settings(_env_file=None, var_dir=tmp_path / "var", **overrides)


def _production(tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "env": "production",
        "jwt_secret": STRONG,
        "encryption_keys": generate_encryption_key_entry("p1"),
        "smtp_url": "smtps://mailer:secret@smtp.example.com",
        "smtp_from": "no-reply@example.com",
        "app_url": "https://app.example",
    }
    return _settings(tmp_path, **(values | overrides))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("30d", timedelta(days=30)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("90", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7x", "-1d", "0", "d7", "1.5d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_token_lifetimes_default_to_7_and_30_days(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.access_token_ttl == timedelta(days=7)
    assert settings.refresh_token_ttl == timedelta(days=30)


def test_environment_variables_use_the_weflux_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEFLUX_ACCESS_TOKEN_TTL", "15m")
    monkeypatch.setenv("WEFLUX_ALLOWED_ORIGINS", "https://app.example, https://admin.example")
    settings = _settings(tmp_path)
    assert settings.access_token_ttl == timedelta(minutes=15)
    assert settings.origins == ["https://app.example", "https://admin.example"]


def test_development_secrets_are_generated_once_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _settings(tmp_path)
    path = tmp_path / "var" / "dev-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated development secrets" in caplog.text
    second = _settings(tmp_path)
    assert first.jwt_secret is not None
    assert second.jwt_secret is not None
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert first.encryption_key_ring == second.encryption_key_ring
    assert first.jwt_secret.get_secret_value() not in caplog.text
    assert set(json.loads(path.read_text())) == {"jwt_secret", "encryption_keys"}


def test_the_generated_secrets_warning_comes_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given development without secrets configured, when a process reads its settings
    twice (`weflux serve`, then the app factory it starts), then it warns once."""
    _settings(tmp_path)
    _settings(tmp_path)
    warnings = [r for r in caplog.records if "generated development secrets" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_smtp_allowed_ports(tmp_path: Path) -> None:
    """WEFLUX_SMTP_ALLOWED_PORTS: SMTP's ports by default, a comma-separated list, a guard
    in production only (elsewhere local test servers listen anywhere)."""
    assert _settings(tmp_path).smtp_allowed_ports == [25, 465, 587, 2525]
    assert _settings(tmp_path).smtp_ports_guard is None
    assert _production(tmp_path).smtp_ports_guard == frozenset({25, 465, 587, 2525})
    assert _settings(tmp_path, smtp_allowed_ports="587, 1025").smtp_allowed_ports == [587, 1025]
    for wrong in ("", "smtp", "0", "70000"):
        with pytest.raises(ValueError, match="port"):
            _settings(tmp_path, smtp_allowed_ports=wrong)


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    settings = _production(tmp_path)
    assert STRONG not in repr(settings)
    assert STRONG not in str(settings.model_dump())


def test_production_accepts_a_complete_configuration(tmp_path: Path) -> None:
    settings = _production(tmp_path, allowed_origins="https://app.example")
    assert settings.is_production
    assert not settings.ide_enabled
    assert settings.origins == ["https://app.example"]


@pytest.mark.parametrize("missing", ["jwt_secret", "encryption_keys"])
def test_production_refuses_missing_secrets(tmp_path: Path, missing: str) -> None:
    with pytest.raises(ConfigError, match=f"WEFLUX_{missing.upper()} must be set"):
        _production(tmp_path, **{missing: None})


def test_production_names_every_refusal_at_once_with_what_to_set(tmp_path: Path) -> None:
    """Given production with none of its required settings (a first try),
    when the settings are loaded,
    then one error lists every variable to fix, each with what to set or run: before,
    each start named only the first (four starts to learn four variables), and the
    secrets' refusals did not say how to make one."""
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, env="production")
    lines = str(refused.value).splitlines()
    assert lines[0] == "4 settings to fix for production:"
    expected = {
        "WEFLUX_JWT_SECRET": "secrets.token_urlsafe(48)",
        "WEFLUX_ENCRYPTION_KEYS": "`weflux keys generate`",
        "WEFLUX_SMTP_URL": "smtps://user:pass@host:465",
        "WEFLUX_APP_URL": "WEFLUX_ALLOWED_ORIGINS",
    }
    assert len(lines) == 1 + len(expected)
    for line, (variable, how) in zip(lines[1:], expected.items(), strict=True):
        assert line.startswith(f"  - {variable} must be set in production"), line
        assert how in line, line


def test_a_short_jwt_secret_is_refused_saying_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at least 32 characters.*token_urlsafe"):
        _settings(tmp_path, jwt_secret="short")


def test_production_refuses_generated_secrets(tmp_path: Path) -> None:
    _settings(tmp_path)  # development writes var/dev-secrets.json
    generated = json.loads((tmp_path / "var" / "dev-secrets.json").read_text())
    with pytest.raises(ConfigError, match="WEFLUX_JWT_SECRET holds a generated"):
        _production(tmp_path, jwt_secret=generated["jwt_secret"])
    with pytest.raises(ConfigError, match="WEFLUX_ENCRYPTION_KEYS holds a generated"):
        _production(tmp_path, encryption_keys=generated["encryption_keys"])


def test_production_refuses_a_backup_key_that_is_also_an_application_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same 32 bytes under another id count: one stolen key must not open both."""
    application = generate_encryption_key_entry("p1")
    shared = "b1:" + application.split(":", 1)[1]
    own = generate_encryption_key_entry("b2")

    with pytest.raises(
        ConfigError, match="WEFLUX_BACKUP_KEYS: key `b1` is also in WEFLUX_ENCRYPTION_KEYS"
    ):
        _production(tmp_path, encryption_keys=application, backup_keys=f"{own},{shared}")
    settings = _production(tmp_path, encryption_keys=application, backup_keys=own)
    assert [kid for kid, _ in settings.backup_key_ring] == ["b2"]
    assert settings.backups_path == tmp_path / "var" / "backups"
    assert settings.backup_retention == timedelta(days=30)
    # Development warns, without the key.
    _settings(tmp_path, encryption_keys=application, backup_keys=shared)
    assert "shares a key with WEFLUX_ENCRYPTION_KEYS" in caplog.text
    assert application.split(":", 1)[1] not in caplog.text


def test_backup_settings_name_their_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_BACKUP_KEYS: key `b1` must decode to 32 bytes"):
        _settings(tmp_path, backup_keys="b1:c2hvcnQ=")
    with pytest.raises(ConfigError, match="WEFLUX_BACKUP_KEYS is not set"):
        _ = _settings(tmp_path).backup_key_ring
    settings = _settings(tmp_path, backup_dir="~/b", backup_retention="7d")
    assert settings.backups_path == Path("~/b").expanduser()
    assert settings.backup_retention == timedelta(days=7)


@pytest.mark.parametrize("origins", ["*", "https://app.example,*", "null", "https://*.example"])
def test_wildcard_origins_are_refused(tmp_path: Path, origins: str) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_ALLOWED_ORIGINS"):
        _production(tmp_path, allowed_origins=origins)
    with pytest.raises(ConfigError, match="WEFLUX_ALLOWED_ORIGINS"):
        _settings(tmp_path, allowed_origins=origins)


def test_production_refuses_the_ide(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_GRAPHQL_IDE"):
        _production(tmp_path, graphql_ide=True)


def test_short_jwt_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_JWT_SECRET"):
        _settings(tmp_path, jwt_secret="short")


def test_encryption_keys_parse_and_the_first_is_primary() -> None:
    first, second = generate_encryption_key_entry("a"), generate_encryption_key_entry("b")
    ring = parse_encryption_keys(f"{first}, {second}")
    assert [kid for kid, _ in ring] == ["a", "b"]
    assert all(len(key) == 32 for _, key in ring)


@pytest.mark.parametrize(
    "value", ["", "nokid", "a:notbase64!", "a:" + "QUJD", "bad kid:" + "A" * 44]
)
def test_bad_encryption_keys_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_encryption_keys(value)
    assert "WEFLUX_ENCRYPTION_KEYS" in str(error.value)
    if ":" in value:
        assert value.split(":", 1)[1] not in str(error.value)


def test_the_command_names_the_setting_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_ENV", "production")
    monkeypatch.delenv("WEFLUX_JWT_SECRET", raising=False)
    assert main(["migrate"]) == 2
    assert "WEFLUX_JWT_SECRET" in capsys.readouterr().err


def test_the_command_reports_malformed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_ACCESS_TOKEN_TTL", "forever")
    assert main(["migrate"]) == 2
    assert "WEFLUX_ACCESS_TOKEN_TTL" in capsys.readouterr().err


def test_sessions_last_90_days_and_a_rotated_token_has_10_seconds_of_grace(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    assert settings.session_max_age == timedelta(days=90)
    assert settings.refresh_reuse_interval == timedelta(seconds=10)
    assert _settings(tmp_path, refresh_reuse_interval="0").refresh_reuse_interval == timedelta(0)
    assert _settings(tmp_path, session_max_age="30d").session_max_age == timedelta(days=30)


def test_a_long_refresh_reuse_interval_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_REFRESH_REUSE_INTERVAL", "10m")
    assert main(["migrate"]) == 2
    assert "WEFLUX_REFRESH_REUSE_INTERVAL" in capsys.readouterr().err


def test_production_refuses_to_start_without_the_platform_smtp_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_SMTP_URL must be set in production"):
        _production(tmp_path, smtp_url=None)


def test_production_needs_an_app_url_or_an_origin_for_links(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_APP_URL"):
        _production(tmp_path, app_url=None)
    settings = _production(tmp_path, app_url=None, allowed_origins="https://inbox.example")
    assert settings.app_base_url == "https://inbox.example"
    assert _production(tmp_path).app_base_url == "https://app.example"


def test_production_refuses_links_to_an_app_over_plain_http(tmp_path: Path) -> None:
    """Given production whose emailed links (sign-up confirmations, invitations: their
    tokens in the fragment) would open the app over plain HTTP, from WEFLUX_APP_URL or
    from the first allowed origin it defaults to,
    when the settings are loaded,
    then they are refused naming the variable: before, production accepted them."""
    with pytest.raises(ConfigError, match=r"^WEFLUX_APP_URL must be an https:// URL"):
        _production(tmp_path, app_url="http://app.example")
    with pytest.raises(ConfigError, match=r"^WEFLUX_ALLOWED_ORIGINS \(its first entry\)"):
        _production(tmp_path, app_url=None, allowed_origins="http://inbox.example")
    development = _settings(tmp_path, app_url="http://localhost:5173")
    assert development.app_base_url == "http://localhost:5173"


def test_an_smtp_url_needs_a_sender(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_SMTP_FROM"):
        _settings(tmp_path, smtp_url="smtps://mailer:secret@smtp.example.com")


def test_a_bad_smtp_url_names_the_variable_without_echoing_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        _settings(
            tmp_path,
            smtp_url="http://mailer:Hunter2-secret@smtp.example.com",
            smtp_from="a@b.example",
        )
    assert "WEFLUX_SMTP_URL" in str(refused.value)
    assert "Hunter2-secret" not in str(refused.value)


def test_empty_mail_and_app_variables_count_as_unset(tmp_path: Path) -> None:
    """Compose passes `${WEFLUX_APP_URL:-}` as an empty string."""
    settings = _settings(tmp_path, smtp_url="", smtp_from=" ", app_url="")
    assert (settings.smtp_url, settings.smtp_from, settings.app_url) == (None, None, None)
    assert settings.platform_smtp is None


def test_the_var_dir_holds_the_default_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given WEFLUX_VAR_DIR and no WEFLUX_DATABASE_URL,
    when the settings are read from another working directory,
    then the SQLite file lies in that var dir, by an absolute path."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("WEFLUX_VAR_DIR", str(tmp_path / "state"))
    settings = load_settings(_env_file=None)
    assert settings.var_dir == tmp_path / "state"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'state' / 'weflux.db'}"

    monkeypatch.setenv("WEFLUX_VAR_DIR", "relative/state")
    relative = load_settings(_env_file=None)
    assert relative.var_dir == elsewhere / "relative" / "state"
    assert relative.database_url.endswith(f"{elsewhere}/relative/state/weflux.db")


def test_an_explicit_database_url_wins_over_the_var_dir(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mine.db'}"
    settings = _settings(tmp_path, database_url=url)
    assert settings.database_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [("security_brute_force", "ten"), ("security_credential_stuffing", "0/hour")],
)
def test_a_detector_threshold_that_does_not_parse_is_refused(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"WEFLUX_{name.upper()}"):
        _settings(tmp_path, **{name: value})


def test_the_security_alert_url_needs_its_secret_and_https_in_production(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_SECURITY_ALERT_SECRET must be set"):
        _settings(tmp_path, security_alert_url="https://pager.example/hook")
    with pytest.raises(ConfigError, match="WEFLUX_SECURITY_ALERT_SECRET must be at least"):
        _settings(
            tmp_path, security_alert_url="https://pager.example/hook", security_alert_secret="short"
        )
    with pytest.raises(ConfigError, match="WEFLUX_SECURITY_ALERT_URL must be https"):
        _production(
            tmp_path,
            allowed_origins="https://app.example",
            security_alert_url="http://pager.example/hook",
            security_alert_secret="s" * 32,
        )
    settings = _production(
        tmp_path,
        allowed_origins="https://app.example",
        security_alert_url="https://pager.example/hook",
        security_alert_secret="s" * 32,
    )
    assert settings.security_alert_url == "https://pager.example/hook"


@pytest.mark.parametrize("value", ["0", "21", "many"])
def test_webhook_max_attempts_out_of_range_is_refused(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """WEFLUX_WEBHOOK_MAX_ATTEMPTS is 1 to 20 (default 12): the retries of a stored
    webhook event then end within 12 hours, inside the shortest raw-body retention."""
    assert _settings(tmp_path).webhook_max_attempts == 12
    assert _settings(tmp_path, webhook_max_attempts="20").webhook_max_attempts == 20
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_WEBHOOK_MAX_ATTEMPTS", value)
    assert main(["migrate"]) == 2
    assert "WEFLUX_WEBHOOK_MAX_ATTEMPTS" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "23h", "366d", "forever"])
def test_the_audit_network_retention_is_bounded(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """WEFLUX_AUDIT_NETWORK_RETENTION (the audit trail's and security events' IP
    addresses and user agents) is 1 day to 365 days (default 90): never kept for ever."""
    assert _settings(tmp_path).audit_network_retention == timedelta(days=90)
    assert _settings(tmp_path, audit_network_retention="1d").audit_network_retention == timedelta(
        days=1
    )
    assert _settings(tmp_path, audit_network_retention="365d").audit_network_retention == timedelta(
        days=365
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEFLUX_AUDIT_NETWORK_RETENTION", value)
    assert main(["migrate"]) == 2
    assert "WEFLUX_AUDIT_NETWORK_RETENTION" in capsys.readouterr().err
