"""The committed schema.graphql is what the code exports."""

from __future__ import annotations

import re
from pathlib import Path

from graphql import build_schema

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


# Removals whose object stays (CONTRACT §4, §7): they answer it in its new state.
KEPT_BY_CONTRACT = {
    "revokeSession": "Session!",  # revokedAt set, listed in `sessions`
    "disconnectWhatsAppAccount": "WhatsAppAccount!",  # DISCONNECTED, history kept
    "eraseContact": "DataRequest!",  # the erasure request; the contact is gone at once
}


def test_every_removal_mutation_answers_the_removed_id() -> None:
    """Given the schema's mutations,
    when one is named as a removal (delete…, remove…, revoke…, erase…, disconnect…),
    then it answers `ID!`, the removed object's id, so a client cache can evict it
    (CONTRACT §11), unless the contract keeps that object and answers it instead."""
    mutation = build_schema(export_schema_sdl()).mutation_type
    assert mutation is not None
    removals = {
        name: str(field.type)
        for name, field in mutation.fields.items()
        if re.match(r"(delete|remove|revoke|erase|disconnect)[A-Z]", name)
    }
    assert {"deleteLabel", "deleteCannedReply", "removeMember", "revokeInvitation"} <= set(removals)
    for name, answer in removals.items():
        assert answer == KEPT_BY_CONTRACT.get(name, "ID!"), name
