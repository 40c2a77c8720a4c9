"""The one email address check: email-validator's syntax rules, no DNS, one normal form."""

from __future__ import annotations

import pytest

from weflux.emails import check_email, is_email, normalize_email
from weflux.errors import BadUserInput


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("  Ada.Lovelace+inbox@Example.COM ", "ada.lovelace+inbox@example.com"),
        ("ops@bücher.example", "ops@xn--bcher-kva.example"),
        ("OPS@BÜCHER.example", "ops@xn--bcher-kva.example"),
        ("ops@xn--bcher-kva.example", "ops@xn--bcher-kva.example"),
        ("Rene\u0301@example.com", "ren\u00e9@example.com"),
        ("zed@\uff45xample.com", "zed@example.com"),
        ("admin@demo.weflux.test", "admin@demo.weflux.test"),
    ],
)
def test_a_valid_address_is_kept_in_its_normal_form(given: str, stored: str) -> None:
    """Given a valid address, with spaces around and capitals, or another spelling of its
    mailbox (a Unicode domain, a decomposed accent, full-width letters)
    When it is checked
    Then it comes back in the one form login looks up: trimmed, NFC, the domain in
    ASCII, lower case."""
    assert check_email(given) == stored == normalize_email(given)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign.example.com",
        "name@",
        "@example.com",
        "name@localhost",
        "name@example",
        "name@mail.local",
        "first last@example.com",
        "Weflux <name@example.com>",
        "name..dots@example.com",
        '"quoted"@example.com',
        "name@[192.0.2.1]",
        "x" * 65 + "@example.com",
        "name@example.com\r\nBcc: victim@example.com",
    ],
)
def test_anything_else_is_bad_user_input_naming_the_field(address: str) -> None:
    """Given a string that is not a deliverable address by its syntax alone
    When it is checked for the field `to`
    Then it is refused as BAD_USER_INPUT with that field, and `is_email` says no."""
    assert not is_email(address)
    with pytest.raises(BadUserInput) as caught:
        check_email(address, "to")
    assert caught.value.graphql_code == "BAD_USER_INPUT"
    assert caught.value.details == [{"field": "to", "message": "not an email address"}]
