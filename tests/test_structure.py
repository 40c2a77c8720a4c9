"""Review rules that a machine can check."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "weflux"

# Only the scoping layer may filter by workspace; everything else goes through it. The
# explicit cross-workspace paths (their SQLite statements) are the one other place.
ALLOWED_ORG_FILTERS = {PACKAGE / "auth" / "scoping.py", PACKAGE / "auth" / "crossings.py"}
HAND_WRITTEN_FILTER = re.compile(r"\.org_id\s*==|org_id\s*=\s*:|WHERE[^\n]*org_id", re.IGNORECASE)


def test_no_hand_written_workspace_filters() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path not in ALLOWED_ORG_FILTERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_WRITTEN_FILTER.search(line)
    ]
    assert offenders == [], "filter by workspace through weflux.auth.scoping only"


def test_no_top_level_package_shadows_a_library() -> None:
    for name in ("graphql", "strawberry", "jwt", "redis", "sqlmodel", "alembic"):
        assert not (ROOT / name).exists(), f"a top-level `{name}` would shadow the library"
        assert not (ROOT / f"{name}.py").exists()


def test_live_payload_types_do_not_depend_on_the_caller() -> None:
    """Live results are shared within a visibility class (weflux.gql.event_memo): the types a
    subscription can reach must not read who is asking."""
    types = [
        PACKAGE / "gql" / "inbox" / "types.py",
        PACKAGE / "gql" / "channels" / "types.py",
        PACKAGE / "gql" / "identity" / "types.py",
    ]
    readers = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in types
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "context.actor" in line or "context.principal" in line
    ]
    assert readers == []
