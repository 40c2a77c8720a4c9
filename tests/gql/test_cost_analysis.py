"""The calculated cost of an operation: GitHub's node count, on the real schema, unexecuted."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import OperationType, parse

from weflux.gql.budgets import MUTATION_POINTS
from weflux.gql.cost import DEFAULT_LIST_NODES, OperationCost, operation_cost
from weflux.gql.schema import schema
from weflux.pagination import DEFAULT_PAGE

# The issue's 200-byte query: 50 + 50 x 50 + 50 x 50 x 50 nodes.
ATTACK = (
    "{ conversations(first:50){edges{node{messages(last:50){edges{node{conversation"
    "{messages(last:50){edges{cursor}}}}}}}}}}"
)
INBOX = """query Inbox($first: Int!) { conversations(first: $first) { edges { cursor node {
  id status unreadCount contact { name phoneNumber } assignee { role user { name } }
  lastMessage { text createdAt } } } pageInfo { hasNextPage endCursor } } }"""


def cost(document: str, variables: dict[str, Any] | None = None, name: str | None = None) -> int:
    result = operation_cost(schema._schema, parse(document), name, variables)
    assert result is not None
    return result.nodes


def test_the_issues_query_counts_every_nested_page() -> None:
    # Given the 200-byte query of the issue, when its cost is calculated,
    # then every nested page multiplies: far above the 10,000 limit
    assert cost(ATTACK) == 50 + 50 * 50 + 50 * 50 * 50 == 127_550


def test_the_inbox_page_costs_its_page() -> None:
    # Given the inbox page (contact, assignee and last message are single objects)
    # Then it costs the page size it asks for
    assert cost(INBOX, {"first": 50}) == 50
    assert cost(INBOX, {"first": 100}) == 100


def test_sibling_connections_are_summed() -> None:
    query = """{ conversations(first: 10) { edges { node { id } } }
                 contacts(first: 20) { edges { node { id } } } }"""
    assert cost(query) == 30


def test_a_connection_without_first_or_last_counts_its_default_page() -> None:
    assert cost("{ conversations { edges { node { id } } } }") == DEFAULT_PAGE
    nested = "{ conversations(first: 2) { edges { node { messages { edges { cursor } } } } } }"
    assert cost(nested) == 2 + 2 * DEFAULT_PAGE


def test_variables_and_their_defaults_are_resolved() -> None:
    query = """query($n: Int = 7, $m: Int) { conversations(first: $n) { edges { node {
        messages(last: $m) { edges { cursor } } } } } }"""
    # The default of $n, and $m unset: the messages' default page
    assert cost(query) == 7 + 7 * DEFAULT_PAGE
    assert cost(query, {"n": 3, "m": 4}) == 3 + 3 * 4
    # A value the resolver would refuse (not an integer) counts as the default page
    assert cost(query, {"n": "lots", "m": 1}) == DEFAULT_PAGE + DEFAULT_PAGE


def test_a_page_is_counted_at_most_at_the_page_cap() -> None:
    # first: 1000 is refused by the resolver (BAD_USER_INPUT); it can return 100 at most
    assert cost("{ conversations(first: 1000) { edges { cursor } } }") == 100
    assert cost("{ conversations(first: -5) { edges { cursor } } }") == 0


def test_fragments_inline_fragments_and_aliases_all_count() -> None:
    query = """
      fragment History on Conversation { messages(last: 10) { edges { cursor } } }
      fragment Page on ConversationConnection { edges { node { ...History } } }
      query {
        a: conversations(first: 5) { ...Page }
        b: conversations(first: 5) { edges { node { ... on Conversation { ...History } } } }
        node(id: "x") { ... on Conversation { messages(first: 3) { edges { cursor } } } }
      }"""
    assert cost(query) == (5 + 5 * 10) + (5 + 5 * 10) + 3


def test_a_fragment_spread_many_times_is_counted_each_time_and_in_linear_work() -> None:
    # Given 60 fragments, each spreading the next twice: 2^60 paths to walk naively
    levels = 60
    fragments = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    fragments.append(f"fragment F{levels} on Query {{ members {{ id }} }}")
    query = "{ ...F0 }\n" + "\n".join(fragments)
    # When its cost is calculated, then it is exact, and it returns at once
    assert cost(query) == DEFAULT_LIST_NODES * 2**levels


def test_plain_lists_of_objects_count_their_documented_cap() -> None:
    assert cost("{ members { id user { email } } }") == DEFAULT_LIST_NODES
    assert cost("{ sessions { id } whatsAppAccounts { id } }") == 2 * DEFAULT_LIST_NODES
    # A list under a page multiplies like a connection
    nested = "{ auditEvents(first: 3) { edges { node { actor { organization { id } } } } } }"
    assert cost(nested) == 3


def test_skip_and_include_are_applied() -> None:
    query = """query($hide: Boolean!) {
        members @skip(if: $hide) { id }
        conversations(first: 4) @include(if: true) { edges { cursor } }
        contacts(first: 9) @include(if: false) { edges { cursor } } }"""
    assert cost(query, {"hide": True}) == 4
    assert cost(query, {"hide": False}) == 4 + DEFAULT_LIST_NODES


def test_introspection_and_typename_count_nothing() -> None:
    assert cost("{ __typename __schema { types { name fields { name } } } }") == 0


def test_the_named_operation_is_the_one_counted() -> None:
    query = """query Small { conversations(first: 1) { edges { cursor } } }
               query Large { conversations(first: 100) { edges { cursor } } }"""
    assert cost(query, name="Small") == 1
    assert cost(query, name="Large") == 100
    assert operation_cost(schema._schema, parse(query), "Missing", None) is None


@pytest.mark.parametrize(
    ("document", "operation", "points"),
    [
        ("{ viewer { id } }", OperationType.QUERY, 1),
        ("{ conversations(first: 20) { edges { cursor } } }", OperationType.QUERY, 21),
        (
            'mutation { markConversationRead(conversationId: "x") { id } }',
            OperationType.MUTATION,
            MUTATION_POINTS,
        ),
        ("subscription { messageAdded { id } }", OperationType.SUBSCRIPTION, 1),
    ],
)
def test_points_are_nodes_plus_one_and_a_mutation_costs_more(
    document: str, operation: OperationType, points: int
) -> None:
    result = operation_cost(schema._schema, parse(document))
    assert result is not None
    assert result.operation is operation
    assert result.points == points
    assert OperationCost(OperationType.MUTATION, 5).points == 5 + MUTATION_POINTS


def test_each_aliased_mutation_is_charged() -> None:
    """Given a mutation that runs one field under three aliases (one in a fragment, one
    skipped), when it is costed, then it is charged for each field that runs: aliases
    ran 15 invitations (emails) for one mutation's price."""
    document = """mutation ($no: Boolean = false) {
      a: markConversationRead(conversationId: "x") { id }
      b: markConversationRead(conversationId: "y") { id }
      c: markConversationRead(conversationId: "z") @include(if: $no) { id }
      ...More
      __typename
    }
    fragment More on Mutation { d: markConversationRead(conversationId: "w") { id } }"""
    result = operation_cost(schema._schema, parse(document))
    assert result is not None
    assert result.points == 3 * MUTATION_POINTS
