"""Error codes: one type, every member documented, every coded error using a member."""

from __future__ import annotations

import re
from pathlib import Path

from weflux.errors import ErrorCode, WefluxError
from weflux.mail.smtp import SmtpError
from weflux.services.channels import UpstreamUnavailable

API_PAGE = Path(__file__).parents[1] / "docs" / "api" / "README.md"


def _subclasses(cls: type[WefluxError]) -> list[type[WefluxError]]:
    found: list[type[WefluxError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_error_code_is_on_the_api_page() -> None:
    """Given the codes of ErrorCode and the API and errors page
    When the page's code spans are read
    Then each code appears there, so a new code cannot ship undocumented."""
    documented = set(re.findall(r"`([A-Z_]+)`", API_PAGE.read_text(encoding="utf-8")))
    assert sorted(set(ErrorCode) - documented) == []


def test_every_coded_error_carries_members_of_error_code() -> None:
    """Given every WefluxError class the package defines
    When its HTTP and GraphQL codes are read
    Then both are members of ErrorCode, not loose strings."""
    classes: list[type[WefluxError]] = [WefluxError, *_subclasses(WefluxError)]
    outside: set[type[WefluxError]] = {SmtpError, UpstreamUnavailable}
    assert outside <= set(classes)  # those outside weflux.errors too
    for cls in classes:
        assert isinstance(cls.code, ErrorCode), cls
        assert isinstance(cls.graphql_code, ErrorCode), cls
