"""The committed schema.graphql is what the code exports."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import REPO_ROOT
from weflux.cli import export_schema_sdl, main


def test_schema_graphql_matches_the_code() -> None:
    committed = (REPO_ROOT / "schema.graphql").read_text()
    assert committed == export_schema_sdl(), "schema.graphql is stale: run `weflux export-schema`"


def test_export_schema_check_fails_on_drift(tmp_path: Path) -> None:
    target = tmp_path / "schema.graphql"
    target.write_text("type Query { stale: Int }\n")
    assert main(["export-schema", "--path", str(target), "--check"]) == 1
    assert main(["export-schema", "--path", str(target)]) == 0
    assert main(["export-schema", "--path", str(target), "--check"]) == 0
