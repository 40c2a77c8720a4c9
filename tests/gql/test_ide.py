"""The GraphiQL page opens with an Authorization header template and says where the
token comes from."""

from __future__ import annotations

import json
import re

import pytest

from tests.fixtures.api import token_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor
from weflux.gql.ide import HEADERS_TEMPLATE, WELCOME, graphiql_page


def _script_constant(html: str, name: str) -> str:
    found = re.search(rf"const {name} = (\".*?(?<!\\)\");", html)
    assert found is not None, name
    value: str = json.loads(found.group(1))
    return value


def test_the_page_opens_with_the_header_template_and_the_welcome_query() -> None:
    """Given the GraphiQL page
    When its script is read
    Then the Headers tab's default is a Bearer template, the first query names POST
    /auth/login and the CDN, and GraphiQL is told to use the template."""
    html = graphiql_page()
    headers = json.loads(_script_constant(html, "DEFAULT_HEADERS"))
    assert headers == {"Authorization": "Bearer <accessToken from POST /auth/login>"}
    assert _script_constant(html, "DEFAULT_HEADERS") == HEADERS_TEMPLATE
    assert _script_constant(html, "EXAMPLE_QUERY") == WELCOME
    assert "defaultHeaders: DEFAULT_HEADERS" in html
    assert "POST /auth/login" in WELCOME
    assert "unpkg.com" in WELCOME
    assert "Welcome to GraphiQL" not in html


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_served_page_is_ours(make_client: ClientFactory) -> None:
    """Given the IDE enabled
    When a browser asks for /graphql
    Then it gets the page with the header template."""
    async with make_client(graphql_ide=True) as ide_client:
        page = await ide_client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.text == graphiql_page()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_browsers_get_with_a_query_is_no_page_and_runs_nothing(
    make_client: ClientFactory, admin: Actor
) -> None:
    """Given the IDE enabled, when a browser GETs /graphql with a `query` (a link, a
    bookmark), then no page and nothing runs: 401 without a token, 405 "Use POST" with
    one, as any other GET (it was 400 "Subscriptions run over the WebSocket")."""
    html = {"Accept": "text/html"}
    params = {"query": "{ viewer { id } }"}
    async with make_client(graphql_ide=True) as ide_client:
        token = await token_for(ide_client, admin)
        anonymous = await ide_client.get("/graphql", params=params, headers=html)
        signed_in = await ide_client.get(
            "/graphql", params=params, headers={**html, "Authorization": f"Bearer {token}"}
        )
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert signed_in.status_code == 405
    assert signed_in.json()["errors"][0]["message"] == "Use POST"
