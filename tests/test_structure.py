"""Review rules that a machine can check (also run by pre-commit: `make lint`).

The workspace-filter rule reads the syntax tree, not lines: a filter split over several
lines, `col(Model.org_id)`, `filter_by(org_id=...)`, a method of the column (`.in_()`,
`.is_()`) and raw SQL naming `org_id` in a WHERE clause are all found.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "weflux"

# Only the scoping layer may filter by workspace; everything else goes through it. The
# explicit cross-workspace paths (their SQLite statements) are the one other place.
ALLOWED_ORG_FILTERS = {PACKAGE / "auth" / "scoping.py", PACKAGE / "auth" / "crossings.py"}

COLUMN = "org_id"
# Calls whose arguments are SQL criteria: any comparison of an `.org_id` inside is a filter.
CRITERIA_CALLS = {
    "where",
    "filter",
    "filter_by",
    "having",
    "join",
    "outerjoin",
    "and_",
    "or_",
    "not_",
    "exists",
    "with_loader_criteria",
}
# Calls that name a column by its string or attribute.
COLUMN_CALLS = {"col", "column", "literal_column", "getattr"}
# Raw SQL: a WHERE/AND/ON clause naming the column, or the column bound to a parameter.
SQL_FILTER = re.compile(
    rf"\b(WHERE|AND|OR|ON)\b[^;]*?\b{COLUMN}\b|\b{COLUMN}\s*(=|<>|!=)\s*:\w", re.IGNORECASE
)


def _name_of(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_column_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == COLUMN


def _is_column(node: ast.AST, *, in_criteria: bool) -> bool:
    """Whether `node` is the `org_id` column (not a row's value), as SQL sees it."""
    if isinstance(node, ast.Attribute) and node.attr == COLUMN:
        owner = node.value
        if in_criteria:  # inside where(...): any `x.org_id` is the column of an entity or alias
            return True
        # Elsewhere only a class (`Model.org_id`) or a table (`table.c.org_id`) is the column;
        # `row.org_id != claims.org_id` compares two values in Python.
        if isinstance(owner, ast.Name) and owner.id[:1].isupper():
            return True
        return isinstance(owner, ast.Attribute) and owner.attr in ("c", "columns")
    if isinstance(node, ast.Call) and _name_of(node.func) in COLUMN_CALLS:
        return any(_is_column_string(arg) or _is_column(arg, in_criteria=True) for arg in node.args)
    return isinstance(node, ast.Subscript) and _is_column_string(node.slice)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


class _OrgFilterFinder(ast.NodeVisitor):
    def __init__(self, docstrings: set[int]) -> None:
        self.docstrings = docstrings
        self.criteria_depth = 0
        self.found: list[tuple[int, str]] = []

    def _report(self, node: ast.expr, what: str) -> None:
        self.found.append((node.lineno, what))

    def visit_Call(self, node: ast.Call) -> None:
        name = _name_of(node.func)
        if name in CRITERIA_CALLS and any(k.arg == COLUMN for k in node.keywords):
            self._report(node, f"{name}({COLUMN}=...)")
        # A method of the column itself: `Model.org_id.in_(...)`, `col(X.org_id).is_(None)`.
        if isinstance(node.func, ast.Attribute) and _is_column(
            node.func.value, in_criteria=self.criteria_depth > 0
        ):
            self._report(node, f"{COLUMN}.{node.func.attr}(...)")
        if name in CRITERIA_CALLS:
            self.visit(node.func)
            self.criteria_depth += 1
            for child in [*node.args, *node.keywords]:
                self.visit(child)
            self.criteria_depth -= 1
        else:
            self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        if any(_is_column(o, in_criteria=self.criteria_depth > 0) for o in operands):
            self._report(node, f"comparison of {COLUMN}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if (
            isinstance(node.value, str)
            and id(node) not in self.docstrings
            and SQL_FILTER.search(node.value)
        ):
            self._report(node, f"SQL naming {COLUMN} in a filter")


def org_filters(source: str) -> list[tuple[int, str]]:
    """The hand-written workspace filters of a module's source: (line, what) pairs."""
    tree = ast.parse(source)
    finder = _OrgFilterFinder(_docstrings(tree))
    finder.visit(tree)
    return sorted(finder.found)


def _package_modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def test_no_hand_written_workspace_filters() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in _package_modules()
        if path not in ALLOWED_ORG_FILTERS
        for line, what in org_filters(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "filter by workspace through weflux.auth.scoping only"


@pytest.mark.parametrize(
    "source",
    [
        "select(Contact).where(Contact.org_id == org_id)",
        "select(Contact).where(\n    Contact.name == name,\n    Contact.org_id == org_id,\n)",
        "stmt.where(\n    org_id\n    == Contact.org_id\n)",
        "select(Contact).where(col(Contact.org_id) == org_id)",
        "select(Contact).where(col(Contact.org_id).in_(ids))",
        "select(Contact).where(Contact.org_id.in_(ids))",
        "select(Contact).where(Contact.org_id != None)",
        "select(Contact).filter_by(org_id=org_id)",
        "session.query(Contact).filter(Contact.org_id == org_id)",
        "select(Contact).where(and_(Contact.id == 1, or_(Contact.org_id == org_id)))",
        "alias = aliased(Contact)\nselect(alias).where(alias.org_id == org_id)",
        "select(Contact).join(Conversation, Conversation.org_id == Contact.org_id)",
        "select(Contact).where(contacts.c.org_id == org_id)",
        "select(Contact).where(getattr(Contact, 'org_id') == org_id)",
        "select(Contact).where(literal_column('org_id') == org_id)",
        "select(Contact).where(contacts.c['org_id'] == org_id)",
        "condition = Contact.org_id == org_id",
        "await session.execute(text('SELECT * FROM contacts WHERE org_id = :org'))",
        "await session.execute(text('''\n    SELECT id FROM contacts\n    WHERE name = :n\n"
        "      AND org_id = :org\n'''))",
        "sql = 'UPDATE contacts SET name = :n WHERE id = :id AND org_id = :org_id'",
    ],
)
def test_the_workspace_filter_lint_catches_every_shape(source: str) -> None:
    """Given a hand-written workspace filter of each shape, the lint reports it."""
    assert org_filters(source) != [], source


@pytest.mark.parametrize(
    "source",
    [
        "Contact(org_id=org_id, name=name)",
        "select(Contact).where(Contact.id == contact_id)",
        "if entry.org_id != claims.org_id:\n    raise Unauthenticated()",
        "context = SecretContext(org_id=row.org_id, table=table)",
        "select(Contact.org_id, Contact.id)",
        'def f():\n    """Filters `WHERE org_id = :org` for you."""',
        "create_tenant_policy(table, column='org_id')",
    ],
)
def test_the_workspace_filter_lint_lets_other_uses_of_org_id_be(source: str) -> None:
    """Given `org_id` used as a value, a constructor argument or a selected column, the lint
    stays quiet."""
    assert org_filters(source) == [], source


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
