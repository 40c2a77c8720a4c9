"""The docs' examples and names are true: what a reader copies runs, what they look up exists.

Checked against the code itself: GraphQL against `schema.graphql`, `weflux …` commands
against the CLI's parser, the API page's route table against the app's routes, its error
tables against `ErrorCode`, and the configuration page's defaults against the settings.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from graphql import (
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
    build_schema,
    get_named_type,
    is_non_null_type,
    parse,
    validate,
)
from graphql.language import DocumentNode, OperationDefinitionNode
from starlette.routing import Route, WebSocketRoute

from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.cli import WS_MAX_MESSAGE_BYTES, build_parser
from weflux.config import generate_encryption_key_entry, load_settings
from weflux.errors import ErrorCode
from weflux.gql.schema import MAX_ALIASES, MAX_DEPTH, MAX_TOKENS
from weflux.gql.view import CONNECTION_INIT_TIMEOUT, MAX_SUBSCRIPTIONS
from weflux.realtime.hub import QUEUE_LIMIT

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
API_PAGE = DOCS / "api" / "README.md"
CONFIGURATION = DOCS / "operations" / "configuration.md"

# Fences may be indented (the README's tour puts them in list items).
_FENCE = re.compile(r"^[ ]*```(\w*)\n(.*?)^[ ]*```", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
# An operation written inline: `subscription { messageUpdated { … } }`, `mutation { … }`.
_INLINE_OPERATION = re.compile(r"^(?:query|mutation|subscription)\b\s*[\w({]")
# `weflux <command> [<subcommand>] [--flag …]`, as a command line or in a code span.
_COMMAND = re.compile(r"(?:^|[\s/])weflux((?: [a-z][a-z0-9-]*)+)([^\n`|]*)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")

# camelCase names in code spans that are not the schema's: the JSON of the /auth routes
# and of a GraphQL request, JavaScript libraries' functions, keys of export files, alerts
# and `extensions.cost`.
NOT_SCHEMA_NAMES = {
    "operationName",
    "mfaToken",
    "organizationId",
    "refreshToken",
    "workspaceId",
    "createClient",
    "connectionParams",
    "createUploadLink",
    "relayStylePagination",
    "restoreRate",
    "dataRequestId",
    "formatVersion",
    "schemaRevision",
    "subjectId",
    "toMessage",  # POST /sandbox/messages: the message a reaction names
    "retryAttempts",  # graphql-ws's createClient options (docs/realtime.md)
    "retryWait",
    "shouldRetry",
    "currentAccessToken",  # the frontend guide's own function
}


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The page without its fenced blocks (their lines kept, blank, so numbers stay true)."""
    return _FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text(encoding="utf-8"))


def _documents() -> list[tuple[str, str]]:
    """Every GraphQL operation the docs show: ```graphql blocks and inline operations."""
    found: list[tuple[str, str]] = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(ROOT)
        for block in _FENCE.finditer(text):
            if block.group(1) == "graphql":
                found.append((f"{where}:{_line(text, block.start())}", block.group(2)))
        prose = _prose(text)
        for span in _CODE_SPAN.finditer(prose):
            if _INLINE_OPERATION.match(span.group(1)):
                found.append((f"{where}:{_line(prose, span.start())}", span.group(1)))
    return found


def _operations(document: DocumentNode) -> list[DocumentNode]:
    """Each operation alone, with the fragments: a block may list several steps."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    others = [d for d in document.definitions if not isinstance(d, OperationDefinitionNode)]
    return [DocumentNode(definitions=(operation, *others)) for operation in operations]


def test_every_graphql_example_of_the_docs_is_valid_against_the_schema(
    schema: GraphQLSchema,
) -> None:
    """Given every ```graphql block and inline `query|mutation|subscription …` of the docs
    When each operation is parsed and validated against schema.graphql
    Then none has an error: a reader pasting it into GraphiQL gets no validation error."""
    documents = _documents()
    assert len(documents) >= 5, "the examples were not found"
    problems: list[str] = []
    for where, source in documents:
        document = parse(source)  # placeholders ("<the id from step 3>") are string values
        for operation in _operations(document):
            problems += [f"{where}: {error.message}" for error in validate(schema, operation)]
    assert problems == []


def _schema_names(schema: GraphQLSchema) -> tuple[set[str], set[str]]:
    """Every field and argument name, and every `Type.field`, of the schema."""
    names: set[str] = set()
    qualified: set[str] = set()
    for type_ in schema.type_map.values():
        if isinstance(type_, GraphQLObjectType | GraphQLInterfaceType | GraphQLInputObjectType):
            for name, field in type_.fields.items():
                names.add(name)
                qualified.add(f"{type_.name}.{name}")
                names.update(getattr(field, "args", None) or {})
    return names, qualified


def test_every_schema_name_the_docs_write_exists(schema: GraphQLSchema) -> None:
    """Given the code spans of the docs that name `Type.field`, or a camelCase field
    (`sendMessage`, `conversations(labelId:)`, `updateCursor`)
    When they are looked up in schema.graphql
    Then each names a field (of that type) or an argument that exists."""
    names, qualified = _schema_names(schema)
    unknown: list[str] = []
    for page in _pages():
        prose = _prose(page.read_text(encoding="utf-8"))
        for span in _CODE_SPAN.finditer(prose):
            where = f"{page.relative_to(ROOT)}:{_line(prose, span.start())}: `{span.group(1)}`"
            typed = re.fullmatch(r"([A-Z]\w+)\.([a-z]\w*)(\(.*\))?", span.group(1))
            if typed and typed.group(1) in schema.type_map:
                if f"{typed.group(1)}.{typed.group(2)}" not in qualified:
                    unknown.append(where)
                continue
            field = re.fullmatch(r"([a-z]+[A-Z]\w*)(?:\((.*)\))?(?:: .*)?", span.group(1))
            if field is None or field.group(1) in NOT_SCHEMA_NAMES:
                continue
            arguments = re.findall(r"(\w+):", field.group(2) or "")
            if field.group(1) not in names or any(a not in names for a in arguments):
                unknown.append(where)
    assert unknown == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_lines() -> list[tuple[str, str]]:
    """`weflux …` as the docs write it: in code spans and in ```sh blocks."""
    found: list[tuple[str, str]] = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(ROOT)
        for block in _FENCE.finditer(text):
            if block.group(1) in ("sh", ""):
                start = _line(text, block.start())
                for number, line in enumerate(block.group(2).splitlines(), start + 1):
                    found.append((f"{where}:{number}", line))
        prose = _prose(text)
        for span in _CODE_SPAN.finditer(prose):
            found.append((f"{where}:{_line(prose, span.start())}", span.group(1)))
    return found


def test_every_weflux_command_and_flag_in_the_docs_exists() -> None:
    """Given each `weflux <command> … --flag` of the docs (code spans and shell blocks)
    When it is looked up in the CLI's own parser
    Then the command (and subcommand) exists and takes each flag named after it."""
    root = build_parser()
    checked, problems = 0, []
    for where, line in _command_lines():
        for command in _COMMAND.finditer(line):
            words, parser, path = command.group(1).split(), root, ["weflux"]
            while words and words[0] in _subcommands(parser):
                parser = _subcommands(parser)[words[0]]
                path.append(words.pop(0))
            if len(path) == 1:
                problems.append(f"{where}: no command `weflux {' '.join(words)}`")
                continue
            if words and _subcommands(parser) and "/" not in command.group(0):
                problems.append(f"{where}: `{' '.join(path)}` has no subcommand {words[0]!r}")
            options = {option for action in parser._actions for option in action.option_strings}
            flags = _FLAG.findall(command.group(2))
            missing = [flag for flag in flags if flag not in options]
            problems += [f"{where}: `{' '.join(path)}` has no {flag}" for flag in missing]
            checked += 1
    assert checked >= 30, "the commands were not found"
    assert problems == []


def _documented_routes() -> set[tuple[str, str]]:
    """(method, path) of each row of the API page's route table; `{name}` as `{}`."""
    section = API_PAGE.read_text(encoding="utf-8").split("## HTTP routes", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    routes: set[tuple[str, str]] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        method = ""
        for span in _CODE_SPAN.findall(row.split(" | ", 1)[0]):
            parts = span.split()
            method = parts[0] if len(parts) == 2 else method
            path = parts[-1].split("?", 1)[0]  # `GET /sandbox/messages?phone=`
            routes.add((method, re.sub(r"\{\w+\}", "{}", path)))
    return routes


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(make_settings(tmp_path, env="development"))  # the sandbox's routes too
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        path = re.sub(r"\{\w+\}", "{}", getattr(route, "path", ""))
        if isinstance(route, WebSocketRoute):
            routes.add(("GET", path))  # the upgrade is a GET
        elif isinstance(route, Route):
            routes.update((method, path) for method in route.methods or () if method != "HEAD")
    return routes


def test_the_route_table_of_the_api_page_is_the_apps_routes(tmp_path: Path) -> None:
    """Given the route table of docs/api/README.md and the app built for development
    When their methods and paths are compared
    Then every route served is documented, and every documented route is served."""
    documented, served = _documented_routes(), _app_routes(tmp_path)
    assert sorted(served - documented) == [], "routes the API page omits"
    assert sorted(documented - served) == [], "documented routes the app does not serve"


def test_the_error_tables_of_the_api_page_name_only_real_codes() -> None:
    """Given the two error tables of the API page (outside GraphQL, and GraphQL's)
    When the code of each row is read
    Then each is a member of ErrorCode (test_errors checks the other way round)."""
    text = API_PAGE.read_text(encoding="utf-8")
    codes = re.findall(r"^\| (?:\d{3} \| )?`([A-Z_]+)` \|", text, re.MULTILINE)
    assert len(codes) >= 25, "the error tables were not found"
    assert sorted(set(codes) - set(ErrorCode)) == []


_DEFAULT_ROW = re.compile(r"^\| `WEFLUX_([A-Z0-9_]+)` \| `([^`]+)` \|", re.MULTILINE)


def test_each_plain_default_of_the_configuration_page_is_the_settings_default() -> None:
    """Given the configuration rows whose default is one literal value (`10s`, `0.5,1,2`)
    When that value is given to the settings as the variable
    Then it reads as the setting's own default: the page states what the code does."""
    rows = _DEFAULT_ROW.findall(CONFIGURATION.read_text(encoding="utf-8"))
    assert len(rows) >= 50, "the configuration table was not found"
    # Only what a test environment must have; every other setting keeps its default.
    required = {"_env_file": None, "env": "test", "jwt_secret": "j" * 40}
    required["encryption_keys"] = generate_encryption_key_entry("docs")
    defaults = load_settings(**required)
    wrong: list[str] = []
    for variable, value in rows:
        name = variable.lower()
        if name in required or "WEFLUX_" in value:  # `env` is set; another variable's value
            continue
        if getattr(load_settings(**required, **{name: value}), name) != getattr(defaults, name):
            wrong.append(f"WEFLUX_{variable}: the page says `{value}`")
    assert wrong == []


def test_every_default_another_page_states_is_the_configuration_pages() -> None:
    """Given the `| WEFLUX_X | default |` rows of pages other than the configuration page
    When each default is compared with the configuration page's row of that variable
    Then they agree: a default changed in one place cannot stay stale in another."""
    reference = dict(_DEFAULT_ROW.findall(CONFIGURATION.read_text(encoding="utf-8")))
    stale: list[str] = []
    for page in _pages():
        if page == CONFIGURATION:
            continue
        for variable, value in _DEFAULT_ROW.findall(page.read_text(encoding="utf-8")):
            if variable in reference and reference[variable] != value:
                stale.append(f"{page.relative_to(ROOT)}: WEFLUX_{variable} `{value}`")
    assert stale == []


_INPUT_SHAPE = re.compile(r"`(\w+)\((\w+): \{([^}`]*)\}")


def test_every_input_shape_the_docs_write_is_the_schemas(schema: GraphQLSchema) -> None:
    """Given the shapes the docs give mutations, `sendMessage(input: {conversationId, text,
    clientMessageId?})`
    When they are compared with the argument's input type in the schema
    Then each field exists, every required one is listed, and `?` marks only optional ones."""
    roots = {**schema.query_type.fields, **schema.mutation_type.fields}  # type: ignore[union-attr]
    problems: list[str] = []
    for page in _pages():
        prose = _prose(page.read_text(encoding="utf-8"))
        for shape in _INPUT_SHAPE.finditer(prose):
            operation, argument, body = shape.groups()
            where = f"{page.relative_to(ROOT)}:{_line(prose, shape.start())}: {operation}"
            field = roots.get(operation)
            if field is None or argument not in field.args:
                problems.append(f"{where}: no such field or argument")
                continue
            input_type = get_named_type(field.args[argument].type)
            assert isinstance(input_type, GraphQLInputObjectType), where
            written = [name.split(":")[0].strip() for name in body.split(",") if name.strip()]
            named = {name.rstrip("?") for name in written}
            problems += [f"{where}: no {name}" for name in named - set(input_type.fields)]
            for name, input_field in input_type.fields.items():
                required = is_non_null_type(input_field.type)
                required = required and input_field.default_value is Undefined
                if required and name not in named:
                    problems.append(f"{where}: {name} is required")
                if required and f"{name}?" in written:
                    problems.append(f"{where}: {name} is marked optional")
    assert problems == []


def test_the_cache_key_fields_of_the_frontend_guide_are_each_lists_filters(
    schema: GraphQLSchema,
) -> None:
    """Given the `relayStylePagination([...])` key fields of the realtime guide's cache
    When they are compared with the arguments of those Query fields, cursors left out
    Then they are the same: a filter left out would merge filtered pages into the full list."""
    guide = (DOCS / "realtime.md").read_text(encoding="utf-8")
    policies = re.findall(r"(\w+): relayStylePagination\(\[([^\]]*)\]\)", guide)
    assert policies, "the cache policy was not found"
    query = schema.query_type.fields  # type: ignore[union-attr]
    for field, keys in policies:
        filters = set(query[field].args) - {"first", "after", "last", "before"}
        assert set(re.findall(r'"(\w+)"', keys)) == filters, field


# Paths the docs name that are not in a checkout on purpose: where a wheel puts migrations.
NOT_IN_A_CHECKOUT = {"weflux/_migrations"}
_REPOSITORY_PATH = re.compile(r"(?<![\w/.])((?:weflux|tests|bench|migrations|docker)/[\w./-]*\w)")


def test_every_repository_path_the_docs_write_exists() -> None:
    """Given the paths of the repository that code spans name (`weflux/gql/cost.py`,
    `tests/media/test_upload_purge_race.py`, `bench/query_cost.py`)
    When each is looked up in the checkout (a module's `.py` may be left out)
    Then it is there: a moved or renamed file cannot leave the docs pointing at nothing."""
    missing: list[str] = []
    for page in _pages():
        prose = _prose(page.read_text(encoding="utf-8"))
        for span in _CODE_SPAN.finditer(prose):
            for path in _REPOSITORY_PATH.findall(span.group(1)):
                if path in NOT_IN_A_CHECKOUT:
                    continue
                if not (ROOT / path).exists() and not (ROOT / f"{path}.py").exists():
                    missing.append(f"{page.relative_to(ROOT)}:{_line(prose, span.start())}: {path}")
    assert missing == []


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_limits_the_docs_state_are_the_codes_constants() -> None:
    """Given the limits of one request and one socket as the limits and realtime pages state
    them (tokens, depth, aliases; operations in flight, frame size, queue, init timeout)
    When they are read back from the pages
    Then each is the constant the code enforces."""
    limits = (DOCS / "api" / "limits.md").read_text(encoding="utf-8")
    realtime = (DOCS / "realtime.md").read_text(encoding="utf-8")
    parsing = re.search(r"([\d,]+) tokens, depth (\d+), (\d+) aliases", limits)
    assert parsing is not None, "limits.md: the parsing limits were not found"
    assert [_number(group) for group in parsing.groups()] == [MAX_TOKENS, MAX_DEPTH, MAX_ALIASES]
    stated = {
        r"At most (\d+) operations in flight per socket": MAX_SUBSCRIPTIONS,
        r"A client frame over (\d+) KiB": WS_MAX_MESSAGE_BYTES // 1024,
        r"no `connection_init` within (\d+) s": CONNECTION_INIT_TIMEOUT,
        r"whose queue \(([\d,]+) events\) overflows": QUEUE_LIMIT,
    }
    for pattern, constant in stated.items():
        found = re.search(pattern, realtime)
        assert found is not None, f"realtime.md: {pattern!r} not found"
        assert _number(found.group(1)) == constant, pattern


def test_the_frontend_guides_uncoded_errors_are_messages_the_code_still_sends() -> None:
    """Given the frontend guide's "Every error carries a code …, except …" sentence
    When each message it excepts ("…") is looked up in the package's source
    Then the code still sends it: before, it excepted the socket's "Subscription limit
    reached", which the socket had long answered with a coded RATE_LIMITED error."""
    realtime = (DOCS / "realtime.md").read_text(encoding="utf-8")
    claim = re.search(r"Every error carries a code(.*?)The ones a screen", realtime, re.DOTALL)
    assert claim is not None, "realtime.md: the 'Every error carries a code' sentence is gone"
    excepted = re.findall(r'"([^"]+)"', claim.group(1).replace("\n", " "))
    source = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "weflux").rglob("*.py"))
    assert [message for message in excepted if message not in source] == []
