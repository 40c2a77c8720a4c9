"""The schema documents itself: every type, field, argument, input field and enum value has
a description, and each root field says who may call it, as the permission table does."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from graphql import get_introspection_query, graphql_sync
from strawberry.types.base import StrawberryObjectDefinition

from weflux.auth.permissions import (
    ROLE_PERMISSIONS,
    SENSITIVE_OPERATIONS,
    Permission,
    who_may,
)
from weflux.gql.permissions import SENSITIVE, guarded
from weflux.gql.schema import schema
from weflux.gql.types import graphql_enum
from weflux.models import Role


def _introspection() -> dict[str, Any]:
    result = graphql_sync(schema._schema, get_introspection_query(descriptions=True))
    assert result.errors is None, result.errors
    assert result.data is not None
    introspected: dict[str, Any] = result.data["__schema"]
    return introspected


def _undescribed() -> list[str]:
    """Every place of the schema (introspection's own types aside) without a description."""
    missing = []

    def check(where: str, item: dict[str, Any]) -> None:
        if not (item.get("description") or "").strip():
            missing.append(where)

    for kind in _introspection()["types"]:
        name = kind["name"]
        if name.startswith("__"):
            continue
        check(name, kind)
        for field in kind.get("fields") or []:
            check(f"{name}.{field['name']}", field)
            for argument in field["args"]:
                check(f"{name}.{field['name']}({argument['name']}:)", argument)
        for input_field in kind.get("inputFields") or []:
            check(f"{name}.{input_field['name']}", input_field)
        for value in kind.get("enumValues") or []:
            check(f"{name}.{value['name']}", value)
    return missing


def test_every_type_field_argument_input_field_and_enum_value_has_a_description() -> None:
    """Given the built schema, introspected as a client sees it
    When every type, field, argument, input field and enum value is walked
    Then each has a description that is not blank."""
    assert _undescribed() == []


def test_the_walk_sees_arguments_input_fields_and_enum_values() -> None:
    """Given the walk of the test above
    When it runs over the schema
    Then it reaches each kind of place (so an empty answer means described, not unseen)."""
    kinds = {kind["name"]: kind for kind in _introspection()["types"]}
    assert kinds["Role"]["enumValues"]
    assert kinds["SendMessageInput"]["inputFields"]
    conversations = next(f for f in kinds["Query"]["fields"] if f["name"] == "conversations")
    assert {argument["name"] for argument in conversations["args"]} >= {"first", "search"}


def _guards() -> dict[str, tuple[str, list[object]]]:
    """Each root field's description and the permissions its permission classes check."""
    guards = {}
    for root in ("Query", "Mutation", "Subscription"):
        definition = schema.get_type_by_name(root)
        assert isinstance(definition, StrawberryObjectDefinition)
        for field in definition.fields:
            name = schema.config.name_converter.get_graphql_name(field)
            required = [getattr(check, "required", None) for check in field.permission_classes]
            guards[f"{root}.{name}"] = (field.description or "", required)
    return guards


@pytest.mark.parametrize("where", sorted(_guards()))
def test_every_root_field_says_which_roles_may_call_it(where: str) -> None:
    """Given a query, mutation or subscription
    When its description is read beside its permission class
    Then it has exactly one, and the description ends with the roles that class admits,
    in the words of the permission table."""
    description, required = _guards()[where]
    assert len(required) == 1
    permission = required[0]
    assert isinstance(permission, Permission)
    assert description.endswith(f" Allowed: {who_may(permission)}.")


def test_the_roles_a_description_names_are_those_of_the_permission_table() -> None:
    """Given a permission that only some roles hold
    When a root field is guarded by it
    Then its description names exactly those roles, strongest first."""
    holders = [role for role in Role if Permission.MANAGE_CONTACTS in ROLE_PERMISSIONS[role]]
    assert holders == [Role.ADMIN, Role.MANAGER]
    described = guarded(Permission.MANAGE_CONTACTS, "Add a contact.")
    assert described["description"] == "Add a contact. Allowed: ADMIN and MANAGER."
    assert who_may(Permission.READ_WORKSPACE) == "every role"
    description, _ = _guards()["Mutation.updateMemberRole"]
    assert description.endswith("Allowed: ADMIN.")


def test_a_role_is_described_by_what_the_permission_table_grants_it() -> None:
    """Given the Role enum in the schema
    When its values are read
    Then each says what the role may do, from the matrix (Agents do not manage members)."""
    values = {
        value["name"]: value["description"]
        for kind in _introspection()["types"]
        if kind["name"] == "Role"
        for value in kind["enumValues"]
    }
    assert "remove members" in values["ADMIN"]
    assert "remove members" not in values["AGENT"]
    assert "see conversations: assigned to self, or unassigned" in values["AGENT"]


def test_graphql_enum_refuses_a_model_enum_with_an_undescribed_member() -> None:
    """Given a model enum whose value descriptions leave a member out
    When it is put in the schema
    Then graphql_enum refuses it and names the member."""

    class Colour(enum.StrEnum):
        RED = "RED"
        BLUE = "BLUE"

    with pytest.raises(TypeError, match="BLUE"):
        graphql_enum(Colour, description="A colour.", values={Colour.RED: "Red."})


def test_every_sensitive_mutation_says_it_needs_a_recent_authentication() -> None:
    """Given the mutations SENSITIVE_OPERATIONS names
    When their descriptions are read
    Then each says it needs a recent authentication, and no other mutation does."""
    for where, (description, _) in _guards().items():
        name = where.split(".", 1)[1]
        assert (SENSITIVE in description) == (
            where.startswith("Mutation.") and name in SENSITIVE_OPERATIONS
        ), where
