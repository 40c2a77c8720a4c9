"""docker-compose.yml's settings pass production's checks, as its services would read them.

No Docker engine runs here (the image is not built in CI: docs/operations/README.md), so
the file's `x-weflux-env` block is interpolated as Compose does (`${VAR}`, `${VAR:-default}`,
`${VAR:?message}`: required) with what an operator must provide, and read by
`load_settings` in a process environment holding nothing else of weflux's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from weflux.config import ConfigError, generate_encryption_key_entry, load_settings

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([?-])([^}]*))?\}")
# What the operator puts in the environment or the .env beside the file.
OPERATOR = {
    "POSTGRES_PASSWORD": "postgres-" + "p" * 24,
    "WEFLUX_APP_PASSWORD": "app-" + "a" * 24,
    "WEFLUX_OWNER_PASSWORD": "owner-" + "o" * 24,
    "WEFLUX_JWT_SECRET": "jwt-" + "j" * 60,
    "WEFLUX_ENCRYPTION_KEYS": generate_encryption_key_entry("k1"),
    "WEFLUX_SMTP_URL": "smtps://mailer:secret@smtp.example.com:465",
    "WEFLUX_SMTP_FROM": "no-reply@example.com",
    "WEFLUX_APP_URL": "https://app.example.com",
}


def interpolate(value: str, given: dict[str, str]) -> str:
    """`value` as Compose interpolates it from `given` (a required variable missing: KeyError)."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if given.get(name):
            return given[name]
        if operator == "?":
            raise KeyError(f"compose refuses to start: {name}: {argument}")
        return argument if operator == "-" else ""

    return _VARIABLE.sub(one, value)


def compose_environment(given: dict[str, str]) -> dict[str, str]:
    block = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["x-weflux-env"]
    return {name: interpolate(str(value), given) for name, value in block.items()}


@pytest.fixture
def weflux_free_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("WEFLUX_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_compose_files_settings_start_in_production(
    weflux_free_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Given what an operator must provide, when the API and the worker read the compose
    file's settings, then production accepts them (Redis and PostgreSQL in plain text on
    the project's own network, which publishes neither)."""
    for name, value in compose_environment(OPERATOR).items():
        weflux_free_environment.setenv(name, value)
    settings = load_settings(_env_file=None, var_dir=tmp_path / "var")
    assert settings.is_production
    assert settings.app_url == "https://app.example.com"
    assert settings.redis_url == "redis://redis:6379/0"


@pytest.mark.parametrize("missing", sorted(OPERATOR.keys() - {"POSTGRES_PASSWORD"}))
def test_the_compose_file_refuses_to_start_without_what_production_needs(missing: str) -> None:
    with pytest.raises(KeyError, match=missing):
        compose_environment({k: v for k, v in OPERATOR.items() if k != missing})


def test_the_compose_files_databases_are_not_published() -> None:
    """Plain text is allowed only because nothing outside the project reaches them."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert "ports" not in services["postgres"]
    assert "ports" not in services["redis"]


def test_a_plain_text_url_elsewhere_is_still_refused(
    weflux_free_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file's allowance is its own: production without it refuses `redis://`."""
    environment = compose_environment(OPERATOR)
    environment.pop("WEFLUX_ALLOW_INSECURE_TRANSPORT", None)
    for name, value in environment.items():
        weflux_free_environment.setenv(name, value)
    with pytest.raises(ConfigError, match="WEFLUX_REDIS_URL"):
        load_settings(_env_file=None, var_dir=tmp_path / "var")
