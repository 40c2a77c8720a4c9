"""`/graphql` exposes nothing without a valid access token: HTTP 401 before parsing."""

from __future__ import annotations

import httpx
import pytest

UNAUTHENTICATED = {
    "errors": [{"message": "Authentication required", "extensions": {"code": "UNAUTHENTICATED"}}]
}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
    ],
)
@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_post_without_a_valid_token_is_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.post("/graphql", json={"query": "{ viewer { id } }"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_malformed_bodies_are_refused_before_parsing(client: httpx.AsyncClient) -> None:
    for content in (b"{", b"\x00\xff" * 100, b'{"query": "{ ' + b"a { " * 5000 + b'"}'):
        response = await client.post(
            "/graphql", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_get_queries_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{ viewer { id } }"})
    assert response.status_code == 401
    assert "viewer" not in response.text


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_other_methods_are_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.put("/graphql", json={"query": "{ viewer { id } }"})
    assert response.status_code == 405


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_unknown_routes_and_methods_answer_our_error_format(
    client: httpx.AsyncClient,
) -> None:
    for response, status, code in (
        (await client.get("/auth/login"), 405, "METHOD_NOT_ALLOWED"),
        (await client.delete("/graphql"), 405, "METHOD_NOT_ALLOWED"),
        (await client.get("/nowhere"), 404, "NOT_FOUND"),
    ):
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert response.headers["Cache-Control"] == "no-store"
