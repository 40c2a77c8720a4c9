"""Access tokens at the `/graphql` edge: every way a token can be wrong gets the same 401.

CONTRACT §2: `/graphql` without a valid access token (missing, malformed, bad signature,
expired, wrong type, revoked session, removed member) answers HTTP 401 before any
GraphQL parsing, with exactly one body and `WWW-Authenticate: Bearer`. Tokens are
forged here as an attacker would (another secret, `alg: none`, algorithm confusion)
and, for defence in depth, with the real secret (tampered claims must still not
reach another session or another workspace). Role changes and removals apply to the
very next request made with an old token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from tests.fixtures.api import error_codes, gql, login, token_for, tokens_for, without_cost
from tests.fixtures.factories import Actor
from weflux.config import Settings
from weflux.ids import encode_global_id
from weflux.models import Organization

UNAUTHENTICATED_BODY = {
    "errors": [{"message": "Authentication required", "extensions": {"code": "UNAUTHENTICATED"}}]
}
VIEWER = "{ viewer { id } }"
OTHER_SECRET = "an-attacker-chosen-secret-" + "z" * 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a genuine token, read without verification (as an attacker can)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers={"typ": "JWT"})


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with an arbitrary header and an empty signature (`alg: none` and friends)."""
    head = _b64(json.dumps(header, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}."


def hmac_signed(claims: dict[str, Any], header: dict[str, Any], secret: str) -> str:
    """HMAC-SHA256 over a hand-made header, whatever `alg` it claims (alg confusion)."""
    head = _b64(json.dumps(header, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def secret_of(settings: Settings) -> str:
    assert settings.jwt_secret is not None
    return settings.jwt_secret.get_secret_value()


async def assert_unauthenticated(response: httpx.Response, case: str = "") -> None:
    assert response.status_code == 401, (case, response.status_code, response.text)
    assert response.json() == UNAUTHENTICATED_BODY, (case, response.text)
    assert response.headers["www-authenticate"] == "Bearer", case
    assert response.headers["cache-control"] == "no-store", case


async def post_viewer(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/graphql", json={"query": VIEWER}, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_genuine_access_token_is_accepted(client: httpx.AsyncClient, admin: Actor) -> None:
    """The control case: without it every refusal below would prove nothing."""
    token = await token_for(client, admin)

    response = await post_viewer(client, bearer(token))

    assert response.status_code == 200, response.text
    assert without_cost(response.json()) == {
        "data": {"viewer": {"id": encode_global_id("Member", admin.membership.id)}}
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_every_missing_malformed_or_forged_token_gets_the_same_401(
    client: httpx.AsyncClient, settings: Settings, admin: Actor, manager: Actor
) -> None:
    """Given a genuine token of the admin (and one of the manager), when any variation
    of it that is not exactly a live, genuine access token is presented, then /graphql
    answers the one 401 body, with `WWW-Authenticate: Bearer`."""
    pair = await tokens_for(client, admin)
    access, refresh = pair["accessToken"], pair["refreshToken"]
    manager_access = await token_for(client, manager)
    genuine = claims_of(access)
    secret = secret_of(settings)
    now = int(time.time())

    def forged(**changes: Any) -> str:
        return sign({**genuine, **changes}, secret)

    def without(claim: str) -> str:
        return sign({k: v for k, v in genuine.items() if k != claim}, secret)

    header_cases: dict[str, Callable[[], dict[str, str]]] = {
        "no Authorization header": lambda: {},
        "`Bearer` with no token": lambda: {"Authorization": "Bearer"},
        "`Bearer ` and blanks": lambda: {"Authorization": "Bearer    "},
        "another scheme (Basic)": lambda: {"Authorization": f"Basic {access}"},
        "the token without a scheme": lambda: {"Authorization": access},
        "a token followed by junk": lambda: {"Authorization": f"Bearer {access} junk"},
        "the token in a cookie instead": lambda: {"Cookie": f"access_token={access}"},
    }
    token_cases: dict[str, str] = {
        "garbage": "garbage",
        "three dots of nothing": "..",
        "a truncated signature": access[:-6],
        "a flipped signature character": access[:-1] + ("A" if access[-1] != "A" else "B"),
        "oversized (8 KiB)": access + "A" * 8192,
        "signed with another secret": sign(genuine, OTHER_SECRET),
        "alg none, empty signature": unsigned(genuine, {"alg": "none", "typ": "JWT"}),
        "alg None, empty signature": unsigned(genuine, {"alg": "None", "typ": "JWT"}),
        "alg none, the genuine signature kept": unsigned(genuine, {"alg": "none"})
        + access.rsplit(".", 1)[1],
        "HS512 with the real secret": sign(genuine, secret, "HS512"),
        "HS384 with the real secret": sign(genuine, secret, "HS384"),
        "RS256 header over an HMAC of the real secret": hmac_signed(
            genuine, {"alg": "RS256", "typ": "JWT"}, secret
        ),
        "ES256 header over an HMAC of the real secret": hmac_signed(
            genuine, {"alg": "ES256", "typ": "JWT"}, secret
        ),
        "a refresh token": refresh,
        "aud of refresh tokens": forged(aud="weflux:refresh"),
        "aud of another service": forged(aud="another-api"),
        "aud as a list with a foreign audience only": forged(aud=["another-api"]),
        "iss of another issuer": forged(iss="https://evil.example"),
        "typ refresh with the access aud": forged(typ="refresh"),
        "expired a minute ago": forged(iat=now - 3600, nbf=now - 3600, exp=now - 60),
        "nbf an hour ahead": forged(nbf=now + 3600),
        "sid of a session that does not exist": forged(sid=str(uuid.uuid4())),
        "sid that is not a uuid": forged(sid="1 OR 1=1"),
        "sub of another user on the admin's session": forged(sub=str(manager.user.id)),
        "sub that is not a uuid": forged(sub="admin"),
        "the manager's session under the admin's sub": sign(
            {**claims_of(manager_access), "sub": str(admin.user.id)}, secret
        ),
    }
    for claim in ("sid", "sub", "org", "exp", "iat", "nbf", "jti", "typ", "iss", "aud"):
        token_cases[f"missing `{claim}`"] = without(claim)

    cases = {name: make() for name, make in header_cases.items()}
    cases |= {name: bearer(token) for name, token in token_cases.items()}
    accepted = []
    for name, headers in cases.items():
        response = await post_viewer(client, headers)
        if (
            response.status_code != 401
            or response.json() != UNAUTHENTICATED_BODY
            or response.headers.get("www-authenticate") != "Bearer"
        ):
            accepted.append((name, response.status_code, response.text[:200]))
    assert accepted == []

    # The genuine tokens still work: the refusals were about the tokens, not the people.
    assert (await post_viewer(client, bearer(access))).status_code == 200
    assert (await post_viewer(client, bearer(manager_access))).status_code == 200


async def test_the_401_comes_before_any_graphql_parsing(client: httpx.AsyncClient) -> None:
    """Without a token, not even a broken document, a GET or a non-JSON body is looked at."""
    for response in (
        await client.post("/graphql", content=b"{not json", headers={"content-type": "text/x"}),
        await client.post("/graphql", json={"query": "{ __schema { types { name } } }"}),
        await client.post("/graphql", json=[{"query": VIEWER}, {"query": VIEWER}]),
        await client.get("/graphql?query={viewer{id}}"),
    ):
        await assert_unauthenticated(response)


async def test_a_session_revoked_with_revoke_session_fails_on_the_very_next_request(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given two sessions of the admin (A and B), B in use (its check cached), when A
    revokes B, then B's access and refresh tokens fail at once while A goes on."""
    a = await token_for(client, admin)
    b = await tokens_for(client, admin)
    assert (await post_viewer(client, bearer(b["accessToken"]))).status_code == 200

    listed = await gql(client, a, "{ sessions { id current } }")
    others = [s["id"] for s in listed.json()["data"]["sessions"] if not s["current"]]
    assert len(others) == 1
    revoked = await gql(
        client,
        a,
        "mutation($id: ID!) { revokeSession(id: $id) { id revokedAt } }",
        {"id": others[0]},
    )
    assert revoked.json()["data"]["revokeSession"]["revokedAt"] is not None, revoked.text

    await assert_unauthenticated(await post_viewer(client, bearer(b["accessToken"])))
    again = await client.post("/auth/refresh", json={"refreshToken": b["refreshToken"]})
    assert again.status_code == 401
    assert (await post_viewer(client, bearer(a))).status_code == 200


async def test_revoking_ones_own_session_ends_it(client: httpx.AsyncClient, agent: Actor) -> None:
    token = await token_for(client, agent)
    listed = await gql(client, token, "{ sessions { id current } }")
    (own,) = [s["id"] for s in listed.json()["data"]["sessions"] if s["current"]]

    response = await gql(
        client, token, "mutation($id: ID!) { revokeSession(id: $id) { id } }", {"id": own}
    )

    assert response.json()["data"]["revokeSession"]["id"] == own, response.text
    await assert_unauthenticated(await post_viewer(client, bearer(token)))


async def test_an_agent_cannot_revoke_the_admins_session(
    client: httpx.AsyncClient, admin: Actor, agent: Actor
) -> None:
    """Given the admin's session id (leaked), when an agent revokes it, then NOT_FOUND
    (as for a session that does not exist) and the admin's token still works."""
    admin_token = await token_for(client, admin)
    agent_token = await token_for(client, agent)
    listed = await gql(client, admin_token, "{ sessions { id current } }")
    (admins,) = [s["id"] for s in listed.json()["data"]["sessions"] if s["current"]]

    response = await gql(
        client, agent_token, "mutation($id: ID!) { revokeSession(id: $id) { id } }", {"id": admins}
    )

    assert error_codes(response) == ["NOT_FOUND"], response.text
    assert (await post_viewer(client, bearer(admin_token))).status_code == 200


async def test_a_removed_members_token_is_refused_on_the_next_request(
    client: httpx.AsyncClient, admin: Actor, manager: Actor
) -> None:
    """Given a manager whose token is in use, when the admin removes them, then the
    token, its refresh token and a new login all fail."""
    admin_token = await token_for(client, admin)
    pair = await tokens_for(client, manager)
    assert (await post_viewer(client, bearer(pair["accessToken"]))).status_code == 200

    removed = await gql(
        client,
        admin_token,
        "mutation($id: ID!) { removeMember(memberId: $id) }",
        {"id": encode_global_id("Member", manager.membership.id)},
    )
    assert without_cost(removed.json()) == {
        "data": {"removeMember": encode_global_id("Member", manager.membership.id)}
    }, removed.text

    await assert_unauthenticated(await post_viewer(client, bearer(pair["accessToken"])))
    refreshed = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert refreshed.status_code == 401
    relogin = await login(client, manager.user.email)
    assert relogin.status_code == 401
    assert relogin.json()["error"]["code"] == "INVALID_CREDENTIALS"


async def test_a_token_with_its_org_claim_swapped_grants_nothing_anywhere(
    client: httpx.AsyncClient,
    settings: Settings,
    admin: Actor,
    other_admin: Actor,
    other_org: Organization,
) -> None:
    """Given the admin's genuine token re-signed (with the real secret) to name another
    workspace, then it is refused, before and after the genuine token has been used
    (a cached session check must be bound to its workspace too)."""
    token = await token_for(client, admin)
    swapped = sign({**claims_of(token), "org": str(other_org.id)}, secret_of(settings))
    query = "{ organization { name } members { user { email } } }"

    cold = await gql(client, swapped, query)
    await assert_unauthenticated(cold, "swapped token, nothing cached")

    genuine = await gql(client, token, query)
    assert genuine.json()["data"]["organization"] == {"name": "Acme"}, genuine.text
    warm = await gql(client, swapped, query)
    await assert_unauthenticated(warm, "swapped token after the genuine one was used")
    assert "globex" not in warm.text.lower()


async def test_a_role_downgrade_applies_to_the_next_request_with_the_old_token(
    client: httpx.AsyncClient, admin: Actor, manager: Actor
) -> None:
    """Given a manager using a token (role cached as MANAGER), when the admin demotes
    them to AGENT, then the same token's next request acts as an AGENT."""
    admin_token = await token_for(client, admin)
    token = await token_for(client, manager)
    invite = "mutation($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"

    before = await gql(client, token, "{ viewer { role } }")
    assert without_cost(before.json()) == {"data": {"viewer": {"role": "MANAGER"}}}
    allowed = await gql(
        client, token, invite, {"input": {"email": "a1@example.com", "name": "A", "role": "AGENT"}}
    )
    assert allowed.json()["data"]["inviteMember"]["token"], allowed.text

    demoted = await gql(
        client,
        admin_token,
        "mutation($input: UpdateMemberRoleInput!) { updateMemberRole(input: $input) { role } }",
        {"input": {"memberId": encode_global_id("Member", manager.membership.id), "role": "AGENT"}},
    )
    assert without_cost(demoted.json()) == {"data": {"updateMemberRole": {"role": "AGENT"}}}, (
        demoted.text
    )

    after = await gql(client, token, "{ viewer { role } }")
    assert without_cost(after.json()) == {"data": {"viewer": {"role": "AGENT"}}}
    refused = await gql(
        client, token, invite, {"input": {"email": "a2@example.com", "name": "A", "role": "AGENT"}}
    )
    assert error_codes(refused) == ["FORBIDDEN"], refused.text
