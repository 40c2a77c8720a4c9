"""updateRetentionPolicy and Organization.retentionPolicy."""

from __future__ import annotations

from typing import Any

from tests.fixtures.factories import Actor
from tests.fixtures.inbox import Api

UPDATE = """mutation($input: UpdateRetentionPolicyInput!) { updateRetentionPolicy(input: $input) {
  messageRetentionDays webhookPayloadRetentionDays } }"""
POLICY = "{ organization { retentionPolicy { messageRetentionDays webhookPayloadRetentionDays } } }"


async def _update(api: Api, actor: Actor, **values: Any) -> dict[str, Any]:
    return await api(actor, UPDATE, {"input": values})


async def test_an_admin_sets_retention_and_omitted_fields_stay(
    api: Api, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    """Given the default policy (messages kept, bodies 30 days),
    when an Admin sets 90 and 14, then only the bodies' 7, then messages to null,
    then each answer and `organization.retentionPolicy` follow, an omitted field stays,
    out-of-range days are BAD_USER_INPUT, an Agent is FORBIDDEN, and the other workspace
    keeps its defaults."""
    default = await api(admin, POLICY)
    assert default["data"]["organization"]["retentionPolicy"] == {
        "messageRetentionDays": None,
        "webhookPayloadRetentionDays": 30,
    }
    both = await _update(api, admin, messageRetentionDays=90, webhookPayloadRetentionDays=14)
    assert both["data"]["updateRetentionPolicy"] == {
        "messageRetentionDays": 90,
        "webhookPayloadRetentionDays": 14,
    }
    bodies = await _update(api, admin, webhookPayloadRetentionDays=7)
    assert bodies["data"]["updateRetentionPolicy"] == {
        "messageRetentionDays": 90,
        "webhookPayloadRetentionDays": 7,
    }
    forever = await _update(api, admin, messageRetentionDays=None)
    assert forever["data"]["updateRetentionPolicy"] == {
        "messageRetentionDays": None,
        "webhookPayloadRetentionDays": 7,
    }
    too_long = await _update(api, admin, webhookPayloadRetentionDays=31)
    assert [e["extensions"]["code"] for e in too_long["errors"]] == ["BAD_USER_INPUT"]
    refused = await _update(api, agent, messageRetentionDays=1)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    theirs = await api(other_admin, POLICY)
    assert theirs["data"]["organization"]["retentionPolicy"]["webhookPayloadRetentionDays"] == 30
