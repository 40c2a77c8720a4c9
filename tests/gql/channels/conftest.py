"""The channel tests' app talks to the fake Cloud API over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.settings import make_settings
from weflux.config import Settings


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path, meta_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
    )
