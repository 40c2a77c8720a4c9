"""Every root field that takes an id, found in the schema, attacked with another workspace's
ids and with the caller's own ids of the wrong type; and called with its own ids by a role
below the field's (CONTRACT §3, §4).

The fields come from the code's schema, not from a list: a field taking an `ID` (an
argument, or a field of an input object, lists included) without an entry in `OPERATIONS`
(tests/fixtures/id_operations.py) fails `test_every_field_taking_an_id_has_an_entry`,
naming it. Subscriptions are attacked over a real socket, from the same table, in
tests/gql/test_id_isolation_live.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from graphql import GraphQLObjectType

from tests.fixtures.api import error_codes, gql
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.id_operations import (
    FIELDS,
    NODE,
    OPERATIONS,
    RANK,
    attempts,
    id_paths,
    stated_role,
    with_id,
)
from tests.fixtures.isolation import NODE_TYPES, Pair, furnish_pair, snapshot
from tests.fixtures.schema_documents import (
    SCHEMA,
    document_of,
    full_document,
    root_type,
    selection_of,
)
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Organization, Role


def test_every_field_taking_an_id_has_an_entry() -> None:
    """A field that takes an id and is missing from OPERATIONS (or whose ids moved) fails
    here by name: add its entry, and the attacks below cover it."""
    missing = sorted(set(FIELDS) - set(OPERATIONS))
    assert not missing, f"fields taking an id without an entry in OPERATIONS: {missing}"
    stale = sorted(set(OPERATIONS) - set(FIELDS))
    assert not stale, f"entries of OPERATIONS naming no field that takes an id: {stale}"
    for name, (_, slots) in FIELDS.items():
        assert set(OPERATIONS[name].types) == set(slots), f"{name}: its ids are {sorted(slots)}"
        for slot, type_name in OPERATIONS[name].types.items():
            assert type_name == NODE or type_name in NODE_TYPES, f"{name}.{slot}: {type_name}"
    # Ids reach the API through root fields only: a nested field taking one needs its own
    # attacks here.
    nested = [
        f"{type_.name}.{name}({arg})"
        for type_ in SCHEMA.type_map.values()
        if isinstance(type_, GraphQLObjectType) and not type_.name.startswith("__")
        if type_ not in (SCHEMA.query_type, SCHEMA.mutation_type, SCHEMA.subscription_type)
        for name, field in type_.fields.items()
        for arg, spec in field.args.items()
        if id_paths(spec.type, arg, frozenset())
    ]
    assert not nested, f"fields of objects taking an id, out of this test's reach: {nested}"


def test_each_entrys_role_is_at_least_the_one_the_schema_states() -> None:
    """The description's `Allowed:` (from the permission table) is the least role for any
    ids; an entry may need more for its own ids (another member's session), never less."""
    for name, (root_name, _) in FIELDS.items():
        field = root_type(root_name.lower()).fields[name]
        assert RANK[OPERATIONS[name].role] >= RANK[stated_role(field)], name


# --- the attacks ------------------------------------------------------------------------


def refusal(response: httpx.Response, field: str, codes: set[str], leaks: list[str]) -> str | None:
    """What is wrong with `response` as a refusal (None: nothing)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    body = response.json()
    found = error_codes(response)
    if len(found) != 1 or found[0] not in codes:
        return f"codes {found}, expected one of {sorted(codes)}"
    if body.get("data") not in (None, {field: None}):
        return "data answered"
    leaked = [secret for secret in leaks if secret in response.text]
    if leaked:
        return f"leaks {leaked}"
    return None


ATTACKED = sorted(name for name, (root, _) in FIELDS.items() if root != "Subscription")
# Rows an attack may add or change in the attacker's own workspace: its trail, its
# detectors' events, its sessions' last use.
TRAILS = frozenset({"audit_events", "security_events", "sessions"})


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    """The default settings with cost budgets that thousands of refused calls never spend."""
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        rate_limit_graphql_cost_member="10000000:100000/second",
        rate_limit_graphql_cost_workspace="10000000:100000/second",
    )


@pytest.fixture
async def pair(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_admin: Actor,
) -> Pair:
    return await furnish_pair(
        client, db, owner_db, (org, admin, manager, agent), (other_org, other_admin)
    )


async def _attack(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Each field, each id slot, each role of Acme, each of `attempts`: what went wrong,
    one line each."""
    failures: list[str] = []
    for name in ATTACKED:
        op = OPERATIONS[name]
        _, slots = FIELDS[name]
        base = op.own(pair.ours)
        for role, token in pair.ours.tokens.items():
            leaks = ["Acme private"] if role == Role.AGENT else []
            allowed = RANK[role] >= RANK[op.role]
            codes = {"NOT_FOUND"} if allowed else {"NOT_FOUND", "FORBIDDEN"}
            for slot, is_list in slots.items():
                nothing = None
                if op.filter:  # what an id naming nothing answers
                    unknown = encode_global_id(op.types[slot], uuid.uuid4())
                    answer = await gql(
                        client, token, op.document, with_id(base, slot, unknown, is_list)
                    )
                    nothing = answer.json()
                    assert "errors" not in nothing, f"{name}: {answer.text}"
                for attempt in attempts(pair, op.types[slot], role):
                    variables = with_id(base, slot, attempt.value, is_list)
                    response = await gql(client, token, op.document, variables)
                    if nothing is not None and response.json()["data"] == nothing["data"]:
                        continue
                    wrong = refusal(response, name, codes, pair.theirs.secrets + leaks)
                    if wrong:
                        where = f"{name}({slot}: {attempt.what}) as {role.value}"
                        failures.append(f"{where}: {wrong}: {response.text}")
    return failures


async def _below_role(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Each field a role may not call, called by it with its own workspace's ids."""
    failures: list[str] = []
    for name in ATTACKED:
        op = OPERATIONS[name]
        for role, token in pair.ours.tokens.items():
            if RANK[role] >= RANK[op.role]:
                continue
            response = await gql(client, token, op.document, op.own(pair.ours))
            wrong = refusal(response, name, {op.below}, [])
            if wrong:
                failures.append(f"{name} as {role.value}: {wrong}: {response.text}")
    return failures


async def _reads(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Every query, each field that needs no argument five objects deep (with Acme's own
    ids where one is taken; `node` with each of Acme's objects, four deep), as each role
    of Acme: nothing of Globex's, nothing the Agent may not see, no fault."""
    documents = []
    for name in root_type("query").fields:
        if name == "node":
            documents += [
                (
                    f"node({t})",
                    f"query {{ node(id: {json.dumps(pair.ours.gid(t))}) {{ __typename "
                    f"... on {t}{selection_of(SCHEMA.get_type(t), 4)} }} }}",  # type: ignore[arg-type]
                )
                for t in NODE_TYPES
                if t != "Media"  # no Node
            ]
            continue
        given = None
        if name in OPERATIONS:
            own = OPERATIONS[name].own(pair.ours)
            given = {arg: json.dumps(value) for arg, value in own.items()}
        documents.append((name, full_document(name, depth=5, given=given)))
    failures: list[str] = []
    for name, document in documents:
        for role, token in pair.ours.tokens.items():
            response = await gql(client, token, document)
            leaks = pair.theirs.secrets + (["Acme private"] if role == Role.AGENT else [])
            leaked = [secret for secret in leaks if secret in response.text]
            codes = set(error_codes(response)) - {"FORBIDDEN", "NOT_FOUND"}
            if response.status_code != 200 or leaked or codes:
                failures.append(f"{name} as {role.value}: {leaked} {codes}: {response.text}")
    return failures


WITHOUT_IDS = sorted(
    (operation, name)
    for operation in ("query", "mutation")
    for name, field in root_type(operation).fields.items()
    if name not in FIELDS and stated_role(field) != Role.AGENT
)


async def _below_role_without_ids(client: httpx.AsyncClient, pair: Pair) -> list[str]:
    """Each field without an id that a role may not call, called by it (placeholder
    arguments: the role is refused before they are read)."""
    failures: list[str] = []
    for operation, name in WITHOUT_IDS:
        least = stated_role(root_type(operation).fields[name])
        for role, token in pair.ours.tokens.items():
            if RANK[role] >= RANK[least]:
                continue
            response = await gql(client, token, document_of(name, operation))
            wrong = refusal(response, name, {"FORBIDDEN"}, [])
            if wrong:
                failures.append(f"{name} as {role.value}: {wrong}: {response.text}")
    return failures


async def test_no_field_reaches_another_workspace_or_past_the_callers_role(
    client: httpx.AsyncClient, owner_db: Database, pair: Pair
) -> None:
    # Given Acme and Globex, each with an object of every type
    globex = await snapshot(owner_db, pair.theirs.org.id)
    acme = await snapshot(owner_db, pair.ours.org.id, skip=TRAILS)
    # When Acme's Admin, Manager and Agent pass Globex's ids, and their own of the wrong
    # type, wherever an id is taken; and call what their role may not (with their own ids)
    failures = await _reads(client, pair)
    failures += await _attack(client, pair)
    failures += await _below_role(client, pair)
    failures += await _below_role_without_ids(client, pair)
    # Then every answer is NOT_FOUND (or FORBIDDEN below the field's role), without Globex's data
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(f[:400] for f in failures)
    # And neither workspace changed
    assert await snapshot(owner_db, pair.theirs.org.id) == globex
    assert await snapshot(owner_db, pair.ours.org.id, skip=TRAILS) == acme
