"""What an operation may cost, counted before it runs (GitHub's node limit).

`nodes` is the number of objects an operation can return at most: each connection
counts its page size (`first` or `last`; without either, its default page) times the
page sizes of the connections it is nested in, and the counts of every connection are
summed. `{ conversations(first: 50) { edges { node { messages(last: 20) { ... } } } } }`
can return 50 conversations and 50 x 20 messages: 1,050 nodes.

- A plain list of objects (`members`, `sessions`, ...) counts as a page of
  `DEFAULT_LIST_NODES` (100) unless its field declares a smaller bound with
  `strawberry.field(metadata={LIST_NODES: n})`; lists of scalars and enums count nothing.
- A connection's own `edges`/`nodes` are its page and count nothing more; `pageInfo` and
  single objects count nothing.
- Fragments, inline fragments and aliases are resolved: every selection counts, so a
  field selected twice counts twice (never less than what runs). `@skip`/`@include` and
  variables (with their defaults) are applied.
- A page size is clamped to 0..`MAX_PAGE` (100): resolvers refuse larger pages anyway.
- Introspection (`__schema`, `__type`, `__typename`) counts nothing: it is bounded by
  the schema itself, and by its own depth rule.

The points charged to the cost budgets are `nodes + 1` for a query or a subscription,
and `nodes + MUTATION_POINTS` for each mutation field of a mutation (Shopify's fixed price
for a mutation): aliases run a mutation once each, so each is charged.
Each fragment is counted once (counts are linear in their multiplier), so the work is
linear in the size of the document, whatever fragments spread each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    BooleanValueNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValueNode,
    VariableNode,
    get_named_type,
    get_operation_ast,
    is_composite_type,
)

from weflux.gql.budgets import MUTATION_POINTS, QUERY_POINTS
from weflux.pagination import DEFAULT_PAGE, MAX_PAGE

DEFAULT_LIST_NODES = 100
LIST_NODES = "weflux_list_nodes"  # strawberry field metadata: a plain list's bound
_PAGE_ARGUMENTS = ("first", "last")
_STRAWBERRY_FIELD = "strawberry-definition"


@dataclass(frozen=True, slots=True)
class OperationCost:
    """The nodes an operation may return and the points it is charged."""

    operation: OperationType
    nodes: int
    mutations: int = 1  # the root fields of a mutation (each alias runs once)

    @property
    def points(self) -> int:
        if self.operation is OperationType.MUTATION:
            return self.nodes + MUTATION_POINTS * max(self.mutations, 1)
        return self.nodes + QUERY_POINTS


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> OperationCost | None:
    """The cost of the operation `operation_name` of a validated document (None: no such one)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None
    root = schema.get_root_type(operation.operation)
    if root is None:
        return None
    counter = _Counter(schema, document, operation, variables or {})
    nodes = counter.selection_set(root, operation.selection_set)
    if operation.operation is not OperationType.MUTATION:
        return OperationCost(operation.operation, nodes)
    return OperationCost(operation.operation, nodes, counter.root_fields(operation.selection_set))


def _is_connection(named: Any) -> bool:
    return isinstance(named, GraphQLObjectType) and {"edges", "pageInfo"} <= named.fields.keys()


def _is_list(field_type: Any) -> bool:
    if isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    return isinstance(field_type, GraphQLList)


def _list_nodes(definition: GraphQLField) -> int:
    strawberry_field = (definition.extensions or {}).get(_STRAWBERRY_FIELD)
    metadata = getattr(strawberry_field, "metadata", None) or {}
    return int(metadata.get(LIST_NODES, DEFAULT_LIST_NODES))


class _Counter:
    """Counts nodes per unit of multiplier: a selection under a page of n counts n times."""

    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self.variables = dict(variables)
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            if name not in self.variables and definition.default_value is not None:
                self.variables[name] = _literal(definition.default_value)
        self._fragment_nodes: dict[str, int] = {}
        self._counting: set[str] = set()

    def selection_set(self, parent: Any, selection_set: SelectionSetNode) -> int:
        total = 0
        for selection in selection_set.selections:
            if self._skipped(selection):
                continue
            if isinstance(selection, FieldNode):
                total += self._field(parent, selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                scope = self.schema.get_type(condition.name.value) if condition else parent
                if is_composite_type(scope):
                    total += self.selection_set(scope, selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(selection.name.value)
        return total

    def root_fields(
        self, selection_set: SelectionSetNode, seen: frozenset[str] = frozenset()
    ) -> int:
        """The fields a root selection runs (aliases each, fragments resolved)."""
        total = 0
        for selection in selection_set.selections:
            if self._skipped(selection):
                continue
            if isinstance(selection, FieldNode):
                total += not selection.name.value.startswith("__")
            elif isinstance(selection, InlineFragmentNode):
                total += self.root_fields(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in seen:  # a cycle: invalid anyway
                    total += self.root_fields(fragment.selection_set, seen | {name})
        return total

    def _fragment(self, name: str) -> int:
        known = self._fragment_nodes.get(name)
        if known is not None:
            return known
        fragment = self.fragments.get(name)
        if fragment is None or name in self._counting:  # unknown or a cycle: invalid anyway
            return 0
        scope = self.schema.get_type(fragment.type_condition.name.value)
        if not is_composite_type(scope):
            return 0
        self._counting.add(name)
        try:
            nodes = self.selection_set(scope, fragment.selection_set)
        finally:
            self._counting.discard(name)
        self._fragment_nodes[name] = nodes
        return nodes

    def _field(self, parent: Any, node: FieldNode) -> int:
        name = node.name.value
        if name.startswith("__") or not isinstance(
            parent, GraphQLObjectType | GraphQLInterfaceType
        ):
            return 0
        definition = parent.fields.get(name)
        if definition is None:
            return 0
        named = get_named_type(definition.type)
        inner = (
            self.selection_set(named, node.selection_set)
            if node.selection_set is not None and is_composite_type(named)
            else 0
        )
        if _is_connection(parent) and name in ("edges", "nodes"):
            return inner  # the page of the connection, counted on the connection itself
        if _is_connection(named):
            size = self._page_size(node)
        elif _is_list(definition.type) and is_composite_type(named):
            size = _list_nodes(definition)
        else:
            return inner
        return size * (1 + inner)

    def _page_size(self, node: FieldNode) -> int:
        sizes = [
            value
            for argument in node.arguments or ()
            if argument.name.value in _PAGE_ARGUMENTS
            and isinstance(value := self._value(argument.value), int)
            and not isinstance(value, bool)
        ]
        if not sizes:
            return DEFAULT_PAGE
        return max(0, min(MAX_PAGE, max(sizes)))

    def _value(self, node: ValueNode) -> Any:
        if isinstance(node, VariableNode):
            return self.variables.get(node.name.value)
        return _literal(node)

    def _skipped(self, selection: Any) -> bool:
        for directive in selection.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                continue
            condition = next(
                (
                    self._value(arg.value)
                    for arg in directive.arguments or ()
                    if arg.name.value == "if"
                ),
                None,
            )
            if condition is (name == "skip"):  # skip(if: true), include(if: false)
                return True
        return False


def _literal(node: ValueNode) -> Any:
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, BooleanValueNode):
        return node.value
    return None
