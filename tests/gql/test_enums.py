"""The schema's enums are the model enums themselves, value for value."""

from __future__ import annotations

import enum

import pytest
from graphql import GraphQLEnumType
from strawberry.types.enum import StrawberryEnumDefinition

from weflux import models
from weflux.gql.schema import schema
from weflux.services.conversations import AssigneeFilter
from weflux.whatsapp.parser import ReplyKind

# Every enum of the schema, by GraphQL name, and the Python enum it is.
MODEL_ENUMS: dict[str, type[enum.Enum]] = {
    "Role": models.Role,
    "SecuritySeverity": models.SecuritySeverity,
    "ConversationStatus": models.ConversationStatus,
    "MessageDirection": models.MessageDirection,
    "MessageStatus": models.MessageStatus,
    "MessageType": models.MessageType,
    "QualityRating": models.QualityRating,
    "WhatsAppAccountStatus": models.AccountStatus,
    "AssigneeFilter": AssigneeFilter,
    "InteractiveReplyKind": ReplyKind,
    "IncidentStatus": models.IncidentStatus,
    "DataRequestKind": models.DataRequestKind,
    "DataRequestStatus": models.DataRequestStatus,
}
# Enums that exist only in the API: no model or service enum stands behind them.
GRAPHQL_ONLY = {"DisconnectedFilter"}


def _schema_enums() -> dict[str, GraphQLEnumType]:
    return {
        name: graphql_type
        for name, graphql_type in schema._schema.type_map.items()
        if isinstance(graphql_type, GraphQLEnumType) and not name.startswith("__")
    }


def test_every_enum_of_the_schema_is_a_model_enum_or_known_to_be_api_only() -> None:
    """Given the enums of the schema
    When they are listed by name
    Then each one is a model (or service) enum exposed as it is, or a known API-only one."""
    assert set(_schema_enums()) == set(MODEL_ENUMS) | GRAPHQL_ONLY


@pytest.mark.parametrize("name", sorted(MODEL_ENUMS))
def test_a_schema_enum_has_exactly_the_values_of_its_model_enum(name: str) -> None:
    """Given a GraphQL enum and the model enum behind it
    When their values are compared
    Then they are the same names and values, and the schema hands out the model's members."""
    model_enum = MODEL_ENUMS[name]
    graphql_enum = _schema_enums()[name]
    assert {key: value.value for key, value in graphql_enum.values.items()} == {
        member.name: member.value for member in model_enum
    }
    definition = schema.get_type_by_name(name)
    assert isinstance(definition, StrawberryEnumDefinition)
    assert definition.wrapped_cls is model_enum
    for member in model_enum:
        assert graphql_enum.parse_value(member.name) is member
        assert graphql_enum.serialize(member) == member.name
