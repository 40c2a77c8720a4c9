"""The docs tree: every setting documented once, every relative link alive, the layout true."""

from __future__ import annotations

import re
from pathlib import Path

from weflux.config import Settings
from weflux.services.audit import Action

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "operations" / "configuration.md"
DEVELOPMENT = DOCS / "development.md"
PACKAGE = ROOT / "weflux"

_VARIABLE = re.compile(r"\bWEFLUX_[A-Z0-9_]*[A-Z0-9]\b")
_TABLE_ROW = re.compile(r"^\| `(WEFLUX_[A-Z0-9_]+)` \|")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _settings_variables() -> set[str]:
    return {
        f"WEFLUX_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if not field.exclude  # `generated_secrets` is bookkeeping, not a variable
    }


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return _LINK.findall(text)


def test_every_setting_is_one_row_of_the_configuration_page_and_nothing_else_is() -> None:
    """Given the settings of weflux/config.py and the configuration page
    When its table rows and every WEFLUX_ name it mentions are read
    Then each setting has exactly one row, and the page names no variable that is not one."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    rows = [m.group(1) for line in text.splitlines() if (m := _TABLE_ROW.match(line))]
    settings = _settings_variables()
    assert sorted(settings - set(rows)) == [], "settings without a row"
    assert sorted({row for row in rows if rows.count(row) > 1}) == [], "settings with two rows"
    assert sorted(set(_VARIABLE.findall(text)) - settings) == [], "variables that do not exist"


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    """Given README.md and every page under docs/
    When each relative link (path and #anchor) is resolved from its page
    Then it names a file inside the repository and, for a page, one of its headings."""
    broken: list[str] = []
    for page in _pages():
        for target in _links(page):
            if _SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{where} (no such file in the repository)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def _layout_block() -> list[str]:
    text = DEVELOPMENT.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    block = re.search(r"^```\n(weflux/[^\n]*\n.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert block is not None, "docs/development.md: the Layout section starts with a weflux/ block"
    return block.group(1).splitlines()


def _documented_layout() -> set[str]:
    """The paths the layout block names: one entry a line, two spaces per level."""
    paths: set[str] = set()
    parents: list[str] = []
    for line in _layout_block()[1:]:  # the first line is weflux/ itself
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2 - 1
        entry = line.split()[0]
        del parents[depth:]
        path = "/".join([*parents, entry.rstrip("/")])
        paths.add(path)
        if entry.endswith("/"):
            parents.append(entry.rstrip("/"))
    return paths


def _package_layout() -> set[str]:
    paths: set[str] = set()
    for path in PACKAGE.rglob("*"):
        relative = path.relative_to(PACKAGE)
        if "__pycache__" in relative.parts or path.name == "__init__.py":
            continue
        if path.is_dir() or path.suffix == ".py":
            paths.add(relative.as_posix())
    return paths


def test_the_layout_in_the_development_page_names_every_module_of_the_package() -> None:
    """Given the layout block of docs/development.md
    When it is compared with the modules and packages under weflux/
    Then it names each of them, and nothing that is not there."""
    documented, actual = _documented_layout(), _package_layout()
    assert sorted(actual - documented) == [], "modules the layout omits"
    assert sorted(documented - actual) == [], "layout entries that do not exist"


def _bounds(name: str) -> list[float]:
    """The numeric bounds pydantic enforces on a setting (`Field(ge=1, le=200)`)."""
    bounds: list[float] = []
    for constraint in Settings.model_fields[name].metadata:
        for attribute in ("ge", "gt", "le", "lt"):
            value = getattr(constraint, attribute, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                bounds.append(value)
    return bounds


def _written(number: float) -> set[str]:
    whole = int(number) if float(number).is_integer() else None
    if whole is None:
        return {str(number)}
    return {str(whole), f"{whole:,}"}


def test_every_bound_a_setting_enforces_is_written_in_its_row() -> None:
    """Given the settings whose values pydantic bounds (`ge`, `gt`, `le`, `lt`)
    When the configuration row of each is read
    Then it writes each bound (`1 to 200`, `at most 60`): a reader sees the range the
    code refuses values outside of, and a bound changed in the code fails here."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    rows = {m.group(1): line for line in text.splitlines() if (m := _TABLE_ROW.match(line))}
    missing: list[str] = []
    for name in Settings.model_fields:
        variable = f"WEFLUX_{name.upper()}"
        if variable not in rows:
            continue  # the test above reports it
        # The row without its default's column: a bound must be in the meaning.
        meaning = rows[variable].split(" | ", 2)[-1]
        numbers = set(re.findall(r"(?<![\w.,])\d+(?:,\d{3})*(?:\.\d+)?", meaning))
        for bound in _bounds(name):
            if not _written(bound) & numbers:
                missing.append(f"{variable}: {bound}")
    assert missing == []


# Upper-case names the docs write that are no one's in this repository: a Linux capability.
NOT_OURS = {"CAP_NET_BIND_SERVICE"}
_CONSTANT = re.compile(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])`")
_SOURCES = ("weflux", "tests", "bench", "docker")


def _source_words() -> set[str]:
    words: set[str] = set()
    files = [ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "docker-compose.yml"]
    for top in _SOURCES:
        files += [path for path in (ROOT / top).rglob("*") if path.suffix in {".py", ".sh", ""}]
    for path in files:
        if path.is_file():
            words.update(re.findall(r"\b[A-Z][A-Z0-9_]+\b", path.read_text(errors="ignore")))
    return words


def test_every_upper_case_name_the_docs_write_exists_in_the_code() -> None:
    """Given the upper-case names in code spans of README.md and docs/ (error codes,
    constants such as `SENSITIVE_OPERATIONS`, enum values such as `TOKEN_INVALID`)
    When each is looked up in the code (weflux/, tests/, bench/, the Docker files)
    Then it is there: a renamed code or constant cannot leave the docs naming nothing.
    (WEFLUX_ variables are the configuration page's test; the history keeps old names.)"""
    words = _source_words()
    missing: list[str] = []
    for page in _pages():
        if page.name == "performance-history.md":
            continue
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        for name in set(_CONSTANT.findall(text)):
            if name.startswith("WEFLUX_") or name in NOT_OURS or name in words:
                continue
            missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert sorted(missing) == []


def test_the_index_links_every_page_of_the_docs() -> None:
    """Given docs/README.md, the index of the reference
    When its links are compared with the pages under docs/
    Then every page is listed: a page added without its row cannot go unseen."""
    index = DOCS / "README.md"
    listed = {(index.parent / link.partition("#")[0]).resolve() for link in _links(index)}
    pages = {page.resolve() for page in DOCS.rglob("*.md") if page != index}
    assert sorted(str(page.relative_to(DOCS.resolve())) for page in pages - listed) == []


def test_the_worker_table_of_the_operations_page_is_the_workers_jobs() -> None:
    """Given the jobs weflux/worker/jobs.py builds (`Job("delivery", ...)`)
    When the operations page's worker table and its count are read
    Then it has one row per job and says how many there are."""
    jobs = re.findall(r'Job\("([\w-]+)"', (PACKAGE / "worker" / "jobs.py").read_text())
    text = (DOCS / "operations" / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Processes and workers\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| ([a-z][a-z ]+) \| ", section, re.MULTILINE)
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert sorted(row.replace(" ", "-") for row in rows if row != "job") == sorted(jobs)
    assert f"runs {numbers[len(jobs) - 1]} jobs" in section


_TEST_NAME = re.compile(r"`(test_\w+)`")


def test_every_test_the_docs_name_exists() -> None:
    """Given the tests the docs name as proof (`test_each_shape_runs_a_statement_built_once`)
    When each name is looked up among the tests' functions and modules
    Then it is there: a test renamed or replaced cannot leave a claim pointing at nothing.
    (The history keeps the names of its time.)"""
    defined: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined.add(path.stem)
        defined.update(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    missing: list[str] = []
    for page in _pages():
        if page.name == "performance-history.md":
            continue
        for name in set(_TEST_NAME.findall(page.read_text(encoding="utf-8"))):
            if name not in defined:
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert sorted(missing) == []


def test_the_audit_table_of_the_security_page_is_every_audit_action() -> None:
    """Given the audit actions of weflux/services/audit.py (`Action`)
    When the `action` table of the security page's audit trail is read
    Then it names each of them, and nothing else: a new action cannot go undocumented."""
    text = (DOCS / "security" / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Audit trail\n", 1)[1].split("\n## ", 1)[0]
    body = section.split("|---|---|\n", 1)[1]  # the rows under the table's header
    rows = [line.split(" | ")[0] for line in body.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([a-z_.]+)`", row)}
    assert sorted(documented ^ {action.value for action in Action}) == []
