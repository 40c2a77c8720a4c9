"""The app factory served by a bare `uvicorn --factory weflux.app:create_app` (no `weflux
serve` before it): weflux's logging holds, format and redaction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fixtures.children import STARTUP, child_env, spawn, stop, wait_ready
from tests.fixtures.databases import SqliteTemplate
from tests.fixtures.live import free_port
from tests.fixtures.secrets import unregistered_value


def _development(sqlite_template: SqliteTemplate, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A development environment on a migrated database (secrets generated)."""
    return child_env(
        WEFLUX_ENV="development",
        WEFLUX_DATABASE_URL=sqlite_template.clone(tmp_path).app,
        WEFLUX_VAR_DIR=str(tmp_path / "var"),
        WEFLUX_IN_PROCESS_WORKER="false",
        **extra,
    )


def _json_lines(output: bytes) -> list[dict[str, object]]:
    lines = output.decode().splitlines()
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, lines
    return [json.loads(line) for line in lines]


def test_a_bare_uvicorn_factory_start_logs_in_weflux_format(
    sqlite_template: SqliteTemplate, tmp_path: Path
) -> None:
    """Given `WEFLUX_LOG_FORMAT=json` and the app started by uvicorn's own command line,
    when it serves a request and stops, then every line it wrote is JSON: the generated
    secrets' warning, uvicorn's own lines and weflux's access line (no query string)."""
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "weflux.app:create_app"]
    process = spawn(
        [*uvicorn, "--port", str(port), "--no-server-header", "--no-proxy-headers"],
        tmp_path,
        _development(sqlite_template, tmp_path, WEFLUX_LOG_FORMAT="json"),
    )
    try:
        assert wait_ready(port, "/healthz", process, STARTUP) == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz?token=query-secret").status_code == 200
    finally:
        output = stop(process)
    lines = _json_lines(output)
    messages = [(line["logger"], str(line["msg"])) for line in lines]
    assert [m for m in messages if "using generated development secrets" in m[1]], lines
    assert [m for m in messages if m[0] == "uvicorn.error" and "Started server" in m[1]], lines
    assert ("weflux.access", "GET /healthz") in messages, lines
    assert b"query-secret" not in output


def test_the_factory_s_logging_redacts_known_secrets(
    sqlite_template: SqliteTemplate, tmp_path: Path
) -> None:
    """Given the app built by its factory in a process whose logging nobody set up (as
    uvicorn's process), when a known secret value is logged, then it comes out redacted,
    in the configured format; and building it again adds no second handler."""
    secret = unregistered_value()
    script = (
        "import logging\n"
        "from weflux.app import create_app\n"
        "from weflux.crypto.redaction import registry\n"
        "create_app()\n"
        "create_app()\n"
        f"registry.register({secret!r})\n"
        f"logging.getLogger('weflux.probe').warning('the value is %s', {secret!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_development(sqlite_template, tmp_path, WEFLUX_LOG_FORMAT="json"),
        capture_output=True,
        timeout=STARTUP,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = _json_lines(done.stderr)
    probes = [line for line in lines if line["logger"] == "weflux.probe"]
    assert len(probes) == 1, lines
    assert probes[0]["msg"] == "the value is [REDACTED]"
    assert secret.encode() not in done.stderr
