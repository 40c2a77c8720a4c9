"""The fake Cloud API served over real HTTP on a free loopback port, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from weflux.whatsapp.client import CloudApiClient
from weflux.whatsapp.fake_cloud_api import FakeCloudApi, running

PHONE_NUMBER_ID = "106540352242922"
OTHER_NUMBER_ID = "106540352242933"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZCtestTOKENforWEFLUXonly1234567890abcdef"
OTHER_TOKEN = "EAAGm0PX4ZCpsBAKZCotherTOKENforWEFLUXonly0987654321"
VERSION = "v25.0"


@pytest.fixture
def fake() -> FakeCloudApi:
    api = FakeCloudApi()
    api.add_number(PHONE_NUMBER_ID, access_token=ACCESS_TOKEN)
    api.add_number(OTHER_NUMBER_ID, access_token=OTHER_TOKEN)
    return api


@pytest.fixture
async def base_url(fake: FakeCloudApi) -> AsyncIterator[str]:
    async with running(fake) as url:
        yield url


@pytest.fixture
async def cloud(base_url: str) -> AsyncIterator[CloudApiClient]:
    client = CloudApiClient(base_url, VERSION)
    yield client
    await client.aclose()
