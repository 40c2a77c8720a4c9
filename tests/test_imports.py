"""The package's import graph: no circle, and a light command line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "weflux"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import of a weflux module by another, wherever it is written (at the top, in
    a function, under TYPE_CHECKING): a deferred import hides a circle, it does not end it."""
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_through_others() -> None:
    """Given every import written in the package, when the graph is walked, then no
    module reaches itself again."""
    assert _circles(_import_graph()) == []


def test_weflux_help_loads_neither_sqlalchemy_nor_strawberry() -> None:
    """Given the command line, when `weflux --help` runs, then it has not imported the
    database or GraphQL libraries (the CLI defers them for its start-up time)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['weflux', '--help']\n"
        "try:\n"
        "    runpy.run_module('weflux', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'strawberry') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_app_and_cli_load_neither_redis_nor_boto3() -> None:
    """Given the default deployment (SQLite, in-process broker, disk media store), when the
    app and the command line are imported, then neither redis-py nor boto3 is: they cost
    seconds of every process start and load only with WEFLUX_REDIS_URL or an S3 store."""
    probe = (
        "import sys\n"
        "import weflux.app, weflux.cli\n"
        "print(sorted(m for m in ('redis', 'boto3', 'botocore') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_worker_loads_neither_graphql_nor_strawberry(tmp_path: Path) -> None:
    """Given `weflux worker`'s runtime on a migrated SQLite database, when it is built and
    started as the worker is and each of its jobs has run once, then neither graphql-core
    nor Strawberry was imported: the worker runs no GraphQL operation, and they cost
    about half a second of its start-up."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WEFLUX_ENV": "development",
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        "WEFLUX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'worker.db'}",
        "WEFLUX_LOG_LEVEL": "WARNING",
    }
    env.pop("WEFLUX_REDIS_URL", None)
    subprocess.run([sys.executable, "-m", "weflux", "migrate"], cwd=tmp_path, env=env, check=True)
    probe = (
        "import asyncio, sys\n"
        "from weflux.cli import _settings\n"
        "from weflux.runtime import Runtime\n"
        "async def main():\n"
        "    runtime = Runtime.build(_settings())\n"
        "    await runtime.start(serve=False, worker=False)\n"
        "    try:\n"
        "        for job in runtime.build_worker().jobs:\n"
        "            await job.run()\n"
        "    finally:\n"
        "        await runtime.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('graphql', 'strawberry') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
