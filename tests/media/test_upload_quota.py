"""The megabytes a workspace may upload (uploadMedia): any member uploads, and an upload
never sent is kept for days, so without a bound one member could fill the media store."""

from __future__ import annotations

import pytest

from tests.fixtures.api import error_codes, token_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor
from tests.fixtures.media import JPEG, upload_media

MB = 1024 * 1024
# A JPEG of a megabyte and a half: it counts 2 (each file counts its size, rounded up).
LARGER = JPEG + b"\x00" * (MB + MB // 2 - len(JPEG))


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_workspace_uploads_so_many_megabytes_an_hour(
    make_client: ClientFactory, agent: Actor, other_org_agent: Actor
) -> None:
    """Given a limit of 3 MB an hour per workspace
    When an Agent uploads 1.5 MB twice, then a small file
    Then the second is RATE_LIMITED (2 + 2 > 3) and nothing of it stored, the small one
    (1) fits, and another workspace's uploads are its own."""
    async with make_client(rate_limit_media_upload_mb_workspace="3/hour") as client:
        token = await token_for(client, agent)
        first = await upload_media(client, token, LARGER, "a.jpg", "image/jpeg")
        second = await upload_media(client, token, LARGER, "b.jpg", "image/jpeg")
        small = await upload_media(client, token, JPEG, "c.jpg", "image/jpeg")
        other = await token_for(client, other_org_agent)
        elsewhere = await upload_media(client, other, LARGER, "d.jpg", "image/jpeg")

    assert error_codes(first) == []
    assert error_codes(second) == ["RATE_LIMITED"]
    assert second.json()["errors"][0]["extensions"]["retryAfter"] > 0
    assert error_codes(small) == []
    assert error_codes(elsewhere) == []
