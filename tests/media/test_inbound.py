"""Inbound media: a real-shaped webhook, the worker's download, encrypted storage on disk
and in S3, and /media/{id} serving it to those who may see its message."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.fixtures.api import gql, token_for
from tests.fixtures.factories import Actor
from tests.fixtures.media import MediaInbox, stored_blobs
from weflux.api.media import byte_range
from weflux.config import Settings
from weflux.ids import encode_global_id
from weflux.media.kinds import content_disposition, safe_filename
from weflux.models import MediaStatus

MEDIA_QUERY = """
query($id: ID!) { node(id: $id) { ... on Message { id type
  media { id mimeType sha256 caption filename size downloadPath failure } } } }
"""

# Kind, MIME type, extra webhook fields, the Content-Disposition it is served with.
CASES = [
    ("image", "image/jpeg", {"caption": "The receipt"}, "inline"),
    ("video", "video/mp4", {"caption": "Unboxing"}, "inline"),
    ("audio", "audio/ogg", {"voice": True}, "inline"),
    ("document", "application/pdf", {"filename": '../../etc/Invoice "42".pdf'}, "attachment"),
    ("sticker", "image/webp", {"animated": False}, "inline"),
]


def _content(kind: str, size: int = 150_000) -> bytes:
    """Recognisable plaintext, longer than two encryption chunks."""
    marker = f"WEFLUX-PLAINTEXT-{kind}-".encode()
    return (marker * (size // len(marker) + 1))[:size]


@pytest.mark.parametrize("media_store_kind", ["disk", "s3"])
@pytest.mark.parametrize(("kind", "mime_type", "fields", "disposition"), CASES)
async def test_inbound_media_is_downloaded_stored_encrypted_and_served(
    media_inbox: MediaInbox,
    admin: Actor,
    settings: Settings,
    media_store_kind: str,
    media_bucket: str | None,
    request: pytest.FixtureRequest,
    kind: str,
    mime_type: str,
    fields: dict[str, object],
    disposition: str,
) -> None:
    """Given a contact who sends a {kind} (a signed, real-shaped webhook),
    when the worker's media job runs,
    then Message.media shows a downloadPath, /media/{id} answers the exact bytes with the
    right headers, and the stored bytes (disk or bucket) hold no plaintext."""
    content = _content(kind)
    message_id = await media_inbox.receive(kind, content, mime_type=mime_type, **fields)
    token = await token_for(media_inbox.client, admin)
    node = encode_global_id("Message", message_id)

    before = (await gql(media_inbox.client, token, MEDIA_QUERY, {"id": node})).json()
    assert before["data"]["node"]["media"]["downloadPath"] is None

    assert await media_inbox.download() == 1

    media = (await gql(media_inbox.client, token, MEDIA_QUERY, {"id": node})).json()["data"][
        "node"
    ]["media"]
    assert media["mimeType"] == mime_type
    assert media["size"] == len(content)
    assert media["sha256"] == hashlib.sha256(content).hexdigest()
    assert media["failure"] is None
    assert media["downloadPath"] == f"/media/{media['id']}"
    if "caption" in fields:
        assert media["caption"] == fields["caption"]

    response = await media_inbox.client.get(
        media["downloadPath"], headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-type"] == mime_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"].startswith(disposition + ";")
    assert "/" not in response.headers["content-disposition"].split("filename=")[1].split(";")[0]

    s3 = request.getfixturevalue("s3_server") if media_store_kind == "s3" else None
    blobs = stored_blobs(settings, s3, media_bucket)
    assert len(blobs) == 1
    assert content[:64] not in blobs[0]
    assert f"WEFLUX-PLAINTEXT-{kind}".encode() not in blobs[0]


async def test_range_requests_answer_206_and_416(media_inbox: MediaInbox, admin: Actor) -> None:
    """Given a stored voice note of 150 kB (three encryption chunks),
    when parts of it are asked for by Range,
    then each answer is 206 with exactly those bytes (across chunk boundaries, suffix
    ranges too), and a range past the end is 416 with the size."""
    content = os.urandom(150_000)
    message_id = await media_inbox.receive("audio", content, mime_type="audio/ogg", voice=True)
    await media_inbox.download()
    row = await media_inbox.media_of(message_id)
    path = f"/media/{encode_global_id('Media', row.id)}"
    token = await token_for(media_inbox.client, admin)
    auth = {"Authorization": f"Bearer {token}"}

    for header, start, end in [
        ("bytes=0-9", 0, 9),
        ("bytes=65530-65545", 65530, 65545),
        ("bytes=131000-", 131000, 149_999),
        ("bytes=-100", 149_900, 149_999),
        ("bytes=140000-999999", 140000, 149_999),
    ]:
        response = await media_inbox.client.get(path, headers={**auth, "Range": header})
        assert response.status_code == 206, header
        assert response.content == content[start : end + 1], header
        assert response.headers["content-range"] == f"bytes {start}-{end}/150000"

    response = await media_inbox.client.get(path, headers={**auth, "Range": "bytes=150000-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */150000"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=" + "9" * 5000 + "-", False),  # starts past any file: 416
        ("bytes=10-" + "9" * 5000, (10, 149_999)),  # ends past it: to its end
        ("bytes=-" + "9" * 5000, (0, 149_999)),  # a suffix longer than it: all of it
        ("bytes=0" + "0" * 5000 + "-9", (0, 9)),
    ],
)
def test_a_range_with_numbers_of_thousands_of_digits_is_answered_as_any_other(
    header: str, expected: tuple[int, int] | bool
) -> None:
    """Given a Range header whose numbers have more digits than Python converts to an int
    (4300), when /media/{id} reads it, then it is judged like any range (RFC 9110), not
    an unhandled ValueError (500)."""
    assert byte_range(header, 150_000) == expected


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("invoice\u202efdp.exe", "invoice_fdp.exe"),  # right-to-left override: "invoiceexe.pdf"
        ("report\u2066.pdf\u2069.exe", "report_.pdf_.exe"),  # bidi isolates
        ("a\u200bb\ufeff.pdf", "a_b_.pdf"),  # zero-width space and no-break space
        ("a\x85b\u2028c.pdf", "a_b_c.pdf"),  # a C1 control, a line separator
        ("a\ud800b.pdf", "a_b.pdf"),  # a lone surrogate (JSON may carry one)
    ],
)
def test_a_file_name_is_served_without_invisible_or_reordering_characters(
    name: str, served: str
) -> None:
    """Given a sender's file name with characters that reorder or hide what a person
    reads (a right-to-left override shows "invoice\u202efdp.exe" as "invoiceexe.pdf"),
    when /media/{id} names the file in its Content-Disposition,
    then they are replaced like control characters, in both forms of the name."""
    header = content_disposition("application/pdf", safe_filename(name, "x"))
    assert header == f"attachment; filename=\"{served}\"; filename*=UTF-8''{served}"


async def test_media_is_refused_without_a_token(media_inbox: MediaInbox) -> None:
    """Given a stored image,
    when it is fetched without a Bearer token, or with a malformed id,
    then the answers are 401 and 404, and neither holds the file."""
    content = _content("image")
    message_id = await media_inbox.receive("image", content, mime_type="image/jpeg")
    await media_inbox.download()
    row = await media_inbox.media_of(message_id)
    path = f"/media/{encode_global_id('Media', row.id)}"

    assert (await media_inbox.client.get(path)).status_code == 401
    bad = await media_inbox.client.get(
        "/media/not-an-id", headers={"Authorization": "Bearer nonsense"}
    )
    assert bad.status_code == 401
    assert content[:64] not in bad.content


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _get(client: httpx.AsyncClient, path: str, token: str) -> httpx.Response:
    return await client.get(path, headers=_auth(token))


async def test_stored_status_is_ready(media_inbox: MediaInbox) -> None:
    """Given a downloaded image,
    when its row is read,
    then it is READY with its data key sealed (an envelope, not the key)."""
    message_id = await media_inbox.receive("image", _content("image"), mime_type="image/png")
    await media_inbox.download()
    row = await media_inbox.media_of(message_id)
    assert row.status == MediaStatus.READY
    assert row.data_key_enc is not None
    assert row.data_key_enc.startswith("v1.")
