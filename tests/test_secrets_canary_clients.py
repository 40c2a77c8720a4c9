"""Nothing a client sends reaches a log line: passwords and tokens on every path.

The app is served by a real uvicorn; every record of every logger at every level
(uvicorn's and the libraries' included) is searched for canary values sent in auth
bodies, GraphQL documents and variables (with typos and validation errors), WebSocket
`connection_init` payloads and documents, query strings of HTTP and WebSocket URLs,
webhook verify tokens, bodies and signatures, and header values.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import live_server
from tests.fixtures.logs import capture_logs
from tests.fixtures.mail import sign_up
from tests.fixtures.settings import make_settings
from weflux.app import create_app

CHANGE_PASSWORD = "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }"


def canary(kind: str) -> str:
    return f"Canary{kind}{uuid.uuid4().hex}"


def fill(document: str, *values: str) -> str:
    """The document with each `@` replaced by the next value."""
    for value in values:
        document = document.replace("@", value, 1)
    return document


class Client:
    """HTTP and WebSocket calls to the live server, every answer kept for the asserts."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.ws_url = base_url.replace("http://", "ws://") + "/graphql"

    async def graphql(
        self, token: str, query: str, variables: dict[str, Any] | None = None, path: str = ""
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        response = await self.http.post(
            "/graphql" + path, json=payload, headers={"Authorization": f"Bearer {token}"}
        )
        body: dict[str, Any] = response.json()
        return body

    async def socket(
        self,
        init: dict[str, Any],
        documents: list[dict[str, Any]],
        *,
        query: str = "",
        **extra: Any,
    ) -> list[dict[str, Any]]:
        """Open a socket, send `connection_init` and each document; the frames answered."""
        frames: list[dict[str, Any]] = []
        try:
            async with websockets.connect(
                self.ws_url + query, subprotocols=[Subprotocol("graphql-transport-ws")], **extra
            ) as socket:
                await socket.send(json.dumps({"type": "connection_init", "payload": init}))
                frames.append(json.loads(await asyncio.wait_for(socket.recv(), 5)))
                for number, payload in enumerate(documents, start=1):
                    message = {"id": str(number), "type": "subscribe", "payload": payload}
                    await socket.send(json.dumps(message))
                    while True:
                        frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
                        frames.append(frame)
                        if frame.get("type") in ("error", "complete"):
                            break
        except websockets.ConnectionClosed as closed:
            frames.append({"closed": closed.rcvd.code if closed.rcvd else None})
        except websockets.InvalidStatus as refused:
            frames.append({"refused": refused.response.status_code})
        return frames


async def test_nothing_a_client_sends_reaches_a_log(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a live server whose every log record is captured,
    when clients send passwords and tokens on every path, right and wrong, well and badly formed
    (bodies that are no JSON included), second-factor codes and re-authentications too,
    then no record of any logger at any level holds any of those values."""
    sent = {
        name: canary(name)
        for name in (
            "SignupPassword",
            "WrongPassword",
            "LoginExtra",
            "BogusRefresh",
            "BogusInvitation",
            "InviteePassword",
            "BogusBearer",
            "LiteralPassword",
            "LiteralNewPassword",
            "VariablePassword",
            "WrongCurrent",
            "SyntaxError",
            "ArgumentLiteral",
            "VariableType",
            "OperationName",
            "HttpQueryToken",
            "HealthQueryToken",
            "VerifyToken",
            "WrongVerifyToken",
            "WebhookBody",
            "WebhookSignature",
            "WsQueryToken",
            "WsBadToken",
            "WsLiteral",
            "WsVariable",
            "WsHeaderToken",
            "Origin",
            "UserAgent",
            "TruncatedBody",
            "NotJsonBody",
            "FormBody",
            "BogusMfaToken",
            "MfaCode",
            "RecoveryCode",
            "ReauthPassword",
            "ReauthCode",
            "EnrollmentCode",
        )
    }
    sent["Origin"] = sent["Origin"].lower()  # a host name, as browsers send it
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=canary("AppSecret"),
        meta_verify_token=sent["VerifyToken"],
    )
    with capture_logs() as logs:
        async with (
            live_server(create_app(settings)) as base_url,
            httpx.AsyncClient(
                timeout=HTTP_TIMEOUT, base_url=base_url, headers={"User-Agent": sent["UserAgent"]}
            ) as http,
        ):
            client = Client(http, base_url)
            # Auth routes: bodies, right and wrong.
            signup = await sign_up(
                http,
                settings,
                {
                    "organizationName": "Canary Co",
                    "name": "Ada",
                    "email": "ada@canary.example",
                    "password": sent["SignupPassword"],
                },
            )
            assert signup.status_code == 201, signup.text
            pair = signup.json()
            sent["AccessToken"], sent["RefreshToken"] = pair["accessToken"], pair["refreshToken"]
            token = pair["accessToken"]
            for body in (
                {"email": "ada@canary.example", "password": sent["WrongPassword"]},
                {"email": "not-an-email", "password": sent["WrongPassword"]},
                {"email": "ada@canary.example", "password": 1, "extra": sent["LoginExtra"]},
            ):
                assert (await http.post("/auth/login", json=body)).status_code in (401, 422)
            bogus = {"refreshToken": sent["BogusRefresh"]}
            assert (await http.post("/auth/refresh", json=bogus)).status_code == 401
            second = (
                await http.post(
                    "/auth/login",
                    json={"email": "ada@canary.example", "password": sent["SignupPassword"]},
                )
            ).json()
            sent["SecondRefreshToken"] = second["refreshToken"]
            spent = {"refreshToken": second["refreshToken"]}
            rotated = await http.post("/auth/refresh", json=spent)
            assert rotated.status_code == 200
            successor = {"refreshToken": rotated.json()["refreshToken"]}
            assert (await http.post("/auth/refresh", json=successor)).status_code == 200
            # Reused after its successor was rotated too: outside the reuse interval's grace.
            assert (await http.post("/auth/refresh", json=spent)).status_code == 401
            invited = await client.graphql(
                token,
                """mutation { inviteMember(input: {email: "bo@canary.example", name: "Bo",
                              role: AGENT}) { token } }""",
            )
            sent["InvitationToken"] = invited["data"]["inviteMember"]["token"]
            for invitation in (sent["BogusInvitation"], sent["InvitationToken"]):
                await http.post(
                    "/auth/invitations/accept",
                    json={"token": invitation, "name": "Bo", "password": sent["InviteePassword"]},
                )
            bearer = {"Authorization": f"Bearer {sent['BogusBearer']}"}
            assert (await http.post("/auth/logout", headers=bearer)).status_code == 401
            assert (await http.post("/graphql", json={}, headers=bearer)).status_code == 401

            # Malformed bodies (the raw body is never quoted), second factors and re-authentication.
            for path in ("/auth/login", "/auth/signup", "/auth/invitations/accept", "/auth/mfa"):
                for content, kind in (
                    (f'{{"password": "{sent["TruncatedBody"]}"', "application/json"),
                    (sent["NotJsonBody"], "application/json"),
                    (f"password={sent['FormBody']}", "application/x-www-form-urlencoded"),
                ):
                    answer = await http.post(path, content=content, headers={"Content-Type": kind})
                    assert answer.status_code in (400, 415, 422), answer.text
            for second_factor in (
                {"mfaToken": sent["BogusMfaToken"], "code": sent["MfaCode"]},
                {"mfaToken": sent["BogusMfaToken"], "recoveryCode": sent["RecoveryCode"]},
            ):
                assert (await http.post("/auth/mfa", json=second_factor)).status_code in (401, 422)
            reauthentication = await http.post(
                "/auth/reauthenticate",
                json={"password": sent["ReauthPassword"], "code": sent["ReauthCode"]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert reauthentication.status_code in (401, 422), reauthentication.text
            await client.graphql(
                token,
                "mutation($c: String!) { confirmTwoFactorEnrollment(code: $c) }",
                {"c": sent["EnrollmentCode"]},
            )

            # GraphQL over HTTP: literals, variables, typos, validation and syntax errors.
            await client.graphql(
                token,
                fill(
                    'mutation { changePassword(input: {currentPasword: "@", newPassword: "@"}) }',
                    sent["LiteralPassword"],
                    sent["LiteralNewPassword"],
                ),
            )
            await client.graphql(
                token,
                CHANGE_PASSWORD,
                {"input": {"currentPasword": sent["VariablePassword"], "newPassword": "x"}},
            )
            wrong = await client.graphql(
                token,
                CHANGE_PASSWORD,
                {
                    "input": {
                        "currentPassword": sent["WrongCurrent"],
                        "newPassword": sent["LiteralNewPassword"],
                    }
                },
            )
            assert wrong["errors"]
            await client.graphql(token, fill('{ viewer { id } "@" }', sent["SyntaxError"]))
            await client.graphql(
                token,
                fill('{ conversations(serch: "@") { edges { cursor } } }', sent["ArgumentLiteral"]),
            )
            await client.graphql(
                token,
                "query($n: Int) { conversations(first: $n) { edges { cursor } } }",
                {"n": sent["VariableType"]},
            )
            await http.post(
                "/graphql",
                json={
                    "query": "query A { viewer { id } } query B { viewer { id } }",
                    "operationName": sent["OperationName"],
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            # Tokens in query strings of HTTP URLs.
            await client.graphql(
                token, "{ viewer { id } }", path=f"?access_token={sent['HttpQueryToken']}"
            )
            await http.get("/healthz", params={"token": sent["HealthQueryToken"]})

            # Webhooks: verify tokens in the query, bodies and signatures.
            for verify in (sent["VerifyToken"], sent["WrongVerifyToken"]):
                params = {"hub.mode": "subscribe", "hub.verify_token": verify, "hub.challenge": "1"}
                await http.get("/webhooks/whatsapp", params=params)
            await http.post(
                "/webhooks/whatsapp",
                content=json.dumps({"object": sent["WebhookBody"]}),
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": f"sha256={sent['WebhookSignature']}",
                },
            )

            # GraphQL over WebSocket: payloads, documents, query strings, header values.
            refused = await client.socket({"authorization": f"Bearer {sent['WsBadToken']}"}, [])
            assert refused[-1] == {"closed": 4403}
            await client.socket(
                {"authorization": f"Bearer {token}"},
                [],
                origin=f"http://{sent['Origin']}.example",
            )
            frames = await client.socket(
                {"authorization": f"Bearer {token}"},
                [
                    {
                        "query": fill(
                            'subscription { messageAdded(after: "@") { id } }', sent["WsLiteral"]
                        )
                    },
                    {
                        "query": "subscription($c: ID) { messageAdded(conversationId: $c) { id } }",
                        "variables": {"c": {"typo": sent["WsVariable"]}},
                    },
                ],
                query=f"?token={sent['WsQueryToken']}",
                additional_headers={
                    "Authorization": f"Bearer {sent['WsHeaderToken']}",
                    "User-Agent": sent["UserAgent"],
                },
            )
            assert frames[0]["type"] == "connection_ack"

    assert any('"logger": "uvicorn.error"' in line for line in logs.lines)
    assert any('"logger": "weflux.access"' in line for line in logs.lines)
    leaks = sorted(name for name, value in sent.items() if value in logs.text)
    assert leaks == [], (
        ", ".join(leaks)
        + "\n"
        + "\n".join(line[:300] for line in logs.lines if any(sent[name] in line for name in leaks))
    )
