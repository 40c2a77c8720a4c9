"""Helpers of the inbox tests: calling the API as an actor, seeding a workspace's inbox."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Conversation

CONVERSATIONS = """
query($first: Int, $after: String, $status: ConversationStatus,
      $assignee: AssigneeFilter, $search: String) {
  conversations(first: $first, after: $after, status: $status, assignee: $assignee,
                search: $search) {
    edges { cursor node { id status } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""

CONVERSATION = """
query($id: ID!) {
  conversation(id: $id) {
    id status lastMessageAt unreadCount serviceWindowExpiresAt
    contact { id name phoneNumber waId userId optedOut }
    whatsAppAccount { id phoneNumberId }
    assignee { id role }
    lastMessage { id text }
  }
}"""

MESSAGES = """
query($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  conversation(id: $id) {
    messages(first: $first, after: $after, last: $last, before: $before) {
      edges { cursor node { id cursor text } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}"""

CONTACTS = """
query($first: Int, $after: String, $search: String) {
  contacts(first: $first, after: $after, search: $search) {
    edges { cursor node { id name phoneNumber waId } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""

NODE = """
query($id: ID!) {
  node(id: $id) {
    id
    ... on Contact { name }
    ... on Conversation { status }
    ... on Message { text }
  }
}"""

ASSIGN = """
mutation($input: AssignConversationInput!) {
  assignConversation(input: $input) { id assignee { id } }
}"""

UPDATE_STATUS = """
mutation($input: UpdateConversationStatusInput!) {
  updateConversationStatus(input: $input) { id status }
}"""

MARK_READ = """
mutation($id: ID!) { markConversationRead(conversationId: $id) { id unreadCount } }"""


def gid(type_name: str, row_id: uuid.UUID) -> str:
    return encode_global_id(type_name, row_id)


def codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


def node_ids(body: dict[str, Any], field: str) -> list[str]:
    """The node ids of the connection `field` of a successful response."""
    assert "errors" not in body, body
    return [edge["node"]["id"] for edge in body["data"][field]["edges"]]


class Api:
    """GraphQL as the tests' actors: one login each, then plain POSTs."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._tokens: dict[uuid.UUID, str] = {}

    async def token(self, actor: Actor) -> str:
        if actor.membership.id not in self._tokens:
            self._tokens[actor.membership.id] = await token_for(self.client, actor)
        return self._tokens[actor.membership.id]

    async def __call__(
        self, actor: Actor, query: str, variables: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        response = await self.client.post(
            "/graphql",
            json=payload,
            headers={"Authorization": f"Bearer {await self.token(actor)}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def all_conversation_ids(self, actor: Actor, **variables: Any) -> list[str]:
        """Every conversation id the actor lists, page by page."""
        found: list[str] = []
        after: str | None = None
        while True:
            body = await self(actor, CONVERSATIONS, {**variables, "first": 100, "after": after})
            found += node_ids(body, "conversations")
            page = body["data"]["conversations"]["pageInfo"]
            if not page["hasNextPage"]:
                return found
            after = page["endCursor"]


@asynccontextmanager
async def workspace(db: Database, org_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
    """A unit of work in one workspace, with no role restriction (test set-up)."""
    async with db.session(org_id) as session:
        yield session


def newest_first(rows: Iterable[Conversation]) -> list[str]:
    """Global ids in the inbox order: last_message_at DESC NULLS LAST, id DESC."""
    by_id = sorted(rows, key=lambda row: row.id, reverse=True)
    with_time = [row for row in by_id if row.last_message_at is not None]
    without = [row for row in by_id if row.last_message_at is None]
    with_time.sort(key=lambda row: row.last_message_at, reverse=True)  # type: ignore[arg-type, return-value]
    return [gid("Conversation", row.id) for row in with_time + without]


def ids_of(type_name: str, rows: Sequence[Any]) -> list[str]:
    return [gid(type_name, row.id) for row in rows]
