"""The repository's pre-commit hooks run the checkout's code, not the installed package's
(a git worktree shares its `.venv`, whose `weflux` is another checkout's)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.fixtures import REPO_ROOT

CONFIG = REPO_ROOT / ".pre-commit-config.yaml"
MARKER = "the checkout's weflux ran"


def _entry(hook: str) -> list[str]:
    """A hook's command line, its `.venv/bin/` tools taken from this test's environment."""
    block = re.search(rf"- id: {re.escape(hook)}\n(?:(?!\s*- ).*\n)*", CONFIG.read_text())
    assert block is not None, f"no hook {hook}"
    entry = re.search(r"^\s+entry: (.+)$", block.group(0), re.MULTILINE)
    assert entry is not None, f"the hook {hook} has no entry"
    argv = shlex.split(entry.group(1))
    if argv[0].startswith(".venv/bin/"):
        argv[0] = str(Path(sys.executable).parent / Path(argv[0]).name)
    return argv


def test_the_schema_drift_hook_runs_the_checkout_s_weflux(tmp_path: Path) -> None:
    """Given a checkout whose `weflux` differs from the installed one (here a stand-in
    that only says it ran), when the schema-drift hook runs at its root as pre-commit
    runs it, then the checkout's code is what runs."""
    package = tmp_path / "weflux"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(f"import sys\nprint({MARKER!r}, sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    done = subprocess.run(
        _entry("schema-drift"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert MARKER in done.stdout, done.stdout + done.stderr
    assert "['export-schema', '--check']" in done.stdout
