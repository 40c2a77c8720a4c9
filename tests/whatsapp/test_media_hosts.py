"""Where the access token may fetch a received media file from."""

from __future__ import annotations

import pytest

from weflux.whatsapp.client import CloudApiClient


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", True),
        ("https://graph.facebook.com/v25.0/attachments", True),
        ("http://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", False),
        ("https://evil.example/whatsapp_business/attachments/?mid=1", False),
        ("https://fbsbx.com.evil.example/x", False),
        ("https://user:pw@lookaside.fbsbx.com/x", False),
        ("https://graph.facebook.com.evil.example/x", False),
        ("file:///etc/passwd", False),
    ],
)
async def test_the_token_goes_only_to_meta_media_hosts(url: str, allowed: bool) -> None:
    """Given the media URL `GET /{media-id}` answered,
    when the client decides whether to fetch it with the access token,
    then only Meta's media hosts over https (or the Graph URL's own origin) qualify."""
    async with CloudApiClient("https://graph.facebook.com", "v25.0") as client:
        assert client.media_host_allowed(url) is allowed
