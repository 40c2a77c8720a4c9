"""The media tests' app: the fake Cloud API over real HTTP, media on disk or in moto's S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.media import media_settings
from weflux.config import Settings


@pytest.fixture
def settings(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    meta_url: str,
    media_store_kind: str,
    media_bucket: str | None,
    request: pytest.FixtureRequest,
) -> Settings:
    s3 = request.getfixturevalue("s3_server") if media_store_kind == "s3" else None
    return media_settings(database_urls, tmp_path, meta_url, media_bucket, s3)
