"""Channel tests: the app talks to the fake Cloud API over real HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.fixtures.api import gql, token_for
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.meta import (
    ACCESS_TOKEN,
    BUSINESS_ACCOUNT_ID,
    OTHER_ACCESS_TOKEN,
    OTHER_PHONE_NUMBER_ID,
    PHONE_NUMBER_ID,
)
from weflux.config import Settings

CONNECT = """
mutation($input: ConnectWhatsAppAccountInput!) {
  connectWhatsAppAccount(input: $input) {
    id displayPhoneNumber phoneNumberId businessAccountId webhookPath qualityRating
    messagingLimitTier status credentialsUpdatedAt hasAppSecret hasWebhookVerifyToken
  }
}"""


def connect_input(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "displayPhoneNumber": "+1 555 078 3881",
        "phoneNumberId": PHONE_NUMBER_ID,
        "businessAccountId": BUSINESS_ACCOUNT_ID,
        "accessToken": ACCESS_TOKEN,
        "appSecret": "app-secret-0123456789abcdef",
        "webhookVerifyToken": "verify-token-0123456789",
    }
    return values | overrides


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path, meta_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
    )


Connector = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def connect(client: httpx.AsyncClient) -> Connector:
    """Connect a number as `actor` (a token is fetched once per actor)."""
    tokens: dict[Any, str] = {}

    async def run(actor: Actor, **overrides: Any) -> httpx.Response:
        if actor.membership.id not in tokens:
            tokens[actor.membership.id] = await token_for(client, actor)
        return await gql(
            client, tokens[actor.membership.id], CONNECT, {"input": connect_input(**overrides)}
        )

    return run


__all__ = [
    "ACCESS_TOKEN",
    "BUSINESS_ACCOUNT_ID",
    "OTHER_ACCESS_TOKEN",
    "OTHER_PHONE_NUMBER_ID",
    "PHONE_NUMBER_ID",
    "Connector",
]
