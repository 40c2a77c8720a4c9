"""One mailbox, one account: spellings of an address (case, Unicode forms, IDN) are one.

An account of `ann@xn--bcher-kva.de` is the account of `Ann@BÜCHER.de` and of an `é`
typed as `e` and a combining accent; an invitation to another spelling must ask for that
account's password, never create a second account for the same mailbox.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.api import gql, login, token_for
from tests.fixtures.factories import PASSWORD, Actor, create_user
from weflux.db import Database
from weflux.emails import normalize_email
from weflux.ids import decode_global_id
from weflux.models import Membership

INVITE = """mutation ($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"""
OTHER_PASSWORD = "an entirely different passphrase 77"


@pytest.mark.parametrize(
    ("stored", "typed"),
    [
        ("ann@xn--bcher-kva.de", "Ann@BÜCHER.de"),
        ("ren\u00e9@example.com", "Rene\u0301@Example.com"),  # é decomposed
        ("zed@example.com", "zed@\uff45xample.com"),  # a full-width e in the domain
    ],
)
async def test_another_spelling_of_a_mailbox_is_the_same_account(
    client: httpx.AsyncClient, db: Database, admin: Actor, stored: str, typed: str
) -> None:
    """Given an account of `stored`, when someone logs in, or is invited and accepts, as
    `typed`, then it is that account: the login works, and the invitation asks for its
    password (a new password is refused, no second account) and joins it."""
    async with db.session() as session:
        user = await create_user(session, email=normalize_email(stored))

    assert (await login(client, typed)).status_code == 401  # no workspace yet: refused
    invited = await gql(
        client,
        await token_for(client, admin),
        INVITE,
        {"input": {"email": typed, "name": "Same Person", "role": "AGENT"}},
    )
    assert "errors" not in invited.json(), invited.json()["errors"]
    token = invited.json()["data"]["inviteMember"]["token"]

    def accept(password: str) -> dict[str, object]:
        return {"json": {"token": token, "name": "Same Person", "password": password}}

    squatter = await client.post("/auth/invitations/accept", **accept(OTHER_PASSWORD))  # type: ignore[arg-type]
    owner = await client.post("/auth/invitations/accept", **accept(PASSWORD))  # type: ignore[arg-type]

    assert squatter.status_code == 401, squatter.json()
    assert owner.status_code == 200, owner.json()
    logged_in = await login(client, typed)
    assert logged_in.status_code == 200, logged_in.json()
    assert logged_in.json()["member"]["id"] == owner.json()["member"]["id"]
    async with db.session(admin.org_id) as session:
        member = await session.get(
            Membership, decode_global_id(owner.json()["member"]["id"], "Member")
        )
    assert member is not None
    assert member.user_id == user.id
