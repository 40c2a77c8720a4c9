"""A number is stored only under a WhatsApp Business Account that Meta says holds it.

The business account id routes Meta's account and quality webhooks to workspaces
(weflux.services.ingest), so claiming another's would deliver its notices.
"""

from __future__ import annotations

import httpx
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.channels import Connector
from tests.fixtures.factories import Actor
from tests.fixtures.meta import ACCESS_TOKEN, BUSINESS_ACCOUNT_ID, PHONE_NUMBER_ID
from weflux.config import Settings
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import WhatsAppAccount
from weflux.sandbox.cloud_api import FakeCloudApi

UPDATE = """mutation($input: UpdateWhatsAppCredentialsInput!) {
  updateWhatsAppCredentials(input: $input) { id } }"""
THEIR_NUMBER = "106540352249001"
THEIR_TOKEN = "EAAGtheirTOKENforANOTHERbusinessACCOUNT0001"
THEIR_BUSINESS_ACCOUNT = "102290129349999"


async def _stored(db: Database, actor: Actor) -> list[WhatsAppAccount]:
    async with db.session(actor.org_id) as session:
        return list((await session.exec(select(WhatsAppAccount))).all())


def _field(response: httpx.Response) -> str:
    return str(response.json()["errors"][0]["extensions"]["details"][0]["field"])


async def test_another_workspaces_business_account_cannot_be_claimed(
    connect: Connector, admin: Actor, other_admin: Actor, fake_meta: FakeCloudApi, db: Database
) -> None:
    """Given a workspace connected to business account W,
    when another workspace connects its own number claiming W with its own token,
    then Meta refuses to list W for that token: BAD_USER_INPUT, nothing stored."""
    assert "errors" not in (await connect(admin)).json()
    fake_meta.add_number(
        THEIR_NUMBER, access_token=THEIR_TOKEN, business_account_id=THEIR_BUSINESS_ACCOUNT
    )
    response = await connect(
        other_admin,
        phoneNumberId=THEIR_NUMBER,
        businessAccountId=BUSINESS_ACCOUNT_ID,
        accessToken=THEIR_TOKEN,
    )
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert _field(response) == "businessAccountId"
    assert THEIR_TOKEN not in response.text
    assert await _stored(db, other_admin) == []


async def test_a_number_the_business_account_does_not_list_is_refused(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi, db: Database
) -> None:
    """Given a token that sees business account W and also a number of another account,
    when that number is connected as part of W,
    then it is refused as not listed under W, and nothing is stored."""
    fake_meta.add_number(
        THEIR_NUMBER, access_token=ACCESS_TOKEN, business_account_id=THEIR_BUSINESS_ACCOUNT
    )
    response = await connect(
        admin, phoneNumberId=THEIR_NUMBER, businessAccountId=BUSINESS_ACCOUNT_ID
    )
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert _field(response) == "phoneNumberId"
    assert "does not list this phone number" in response.json()["errors"][0]["message"]
    assert await _stored(db, admin) == []


async def test_the_number_is_found_on_any_of_metas_pages(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi
) -> None:
    """Given a business account with many numbers, served one per page,
    when its last number is connected,
    then the cursors are followed and the number is stored."""
    for n in range(4):
        fake_meta.add_number(f"10654035224800{n}", access_token=f"EAAGfiller{n}")
    fake_meta.add_number(THEIR_NUMBER, access_token=THEIR_TOKEN)
    fake_meta.max_page_size = 1
    response = await connect(admin, phoneNumberId=THEIR_NUMBER, accessToken=THEIR_TOKEN)
    account = response.json()["data"]["connectWhatsAppAccount"]
    assert account["phoneNumberId"] == THEIR_NUMBER
    pages = [r for r in fake_meta.requests if r.path.endswith("/phone_numbers")]
    assert len(pages) == 7  # the fixture's two numbers, four fillers, then this one


async def test_a_new_token_must_see_the_number_in_its_business_account(
    connect: Connector,
    admin: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
    db: Database,
    settings: Settings,
) -> None:
    """Given a connected number that Meta has since moved to another business account,
    when an admin replaces its access token with one that may use the number,
    then the update is refused (its account's webhooks would not be this number's)."""
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    fake_meta.set_business_account(PHONE_NUMBER_ID, THEIR_BUSINESS_ACCOUNT)
    fake_meta.set_access_token(PHONE_NUMBER_ID, THEIR_TOKEN)
    token = await token_for(client, admin)
    response = await gql(
        client, token, UPDATE, {"input": {"id": account["id"], "accessToken": THEIR_TOKEN}}
    )
    assert error_codes(response) == ["BAD_USER_INPUT"]
    (row,) = await _stored(db, admin)
    stored = open_secret(KeyRing.from_settings(settings), row, "access_token_enc")
    assert stored is not None
    assert stored.reveal() == ACCESS_TOKEN


async def test_meta_unreachable_while_listing_stores_nothing(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi, db: Database
) -> None:
    """Given Meta timing out on the business account's numbers,
    when a number is connected,
    then the answer is UPSTREAM_UNAVAILABLE with the seconds to wait (as a media store's
    outage), and nothing is stored."""
    fake_meta.fail_next(code=2, http_status=503)
    response = await connect(admin)
    assert error_codes(response) == ["UPSTREAM_UNAVAILABLE"]
    assert response.json()["errors"][0]["extensions"]["retryAfter"] == 30
    assert [r.path.rsplit("/", 1)[-1] for r in fake_meta.requests] == ["phone_numbers"]
    assert await _stored(db, admin) == []
