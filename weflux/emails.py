"""Email addresses: the one check (email-validator, syntax only) and the one normal form."""

from __future__ import annotations

import contextlib
import unicodedata

import idna

from weflux.errors import BadUserInput


def normalize_email(value: str) -> str:
    """The form an address is stored and looked up in: one form per mailbox.

    Trimmed, Unicode NFC (`é` typed as one character or as `e` and an accent is one
    address), the domain in its ASCII form (IDNA/UTS-46: `bücher.de`, `BÜCHER.de` and
    `xn--bcher-kva.de` are one domain; so are full-width letters and their ASCII ones),
    and lower case. Two spellings of one mailbox never make two accounts. Addresses that
    only look alike (a Cyrillic letter for a Latin one) are different mailboxes and stay
    apart: proving the mailbox (sign-up, invitation) is what keeps them honest.
    """
    text = unicodedata.normalize("NFC", value.strip())
    local, at, domain = text.rpartition("@")
    if at and not domain.isascii():
        # Not a domain name: kept as typed, which no valid address matches.
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            domain = idna.encode(domain, uts46=True).decode("ascii")
    return unicodedata.normalize("NFC", f"{local}{at}{domain}".lower())


def is_email(value: str) -> bool:
    """Whether `value`, exactly as given, is an address mail can be sent to.

    Syntax only: no DNS look-up. A local part over 64 characters, quoted local parts,
    IP literals, display names and reserved domains (`localhost`, `.local`, `.invalid`…)
    are refused; `.test` is accepted, as the demo workspace's addresses use it.
    """
    # deferred: its syntax tables cost the CLI 40 ms at start-up (config imports mail)
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False, test_environment=True, strict=True)
    except EmailNotValidError:
        return False
    return True


def check_email(value: str, field: str = "email") -> str:
    """A valid email address in its normal form, or BAD_USER_INPUT naming `field`."""
    email = normalize_email(value)
    if not is_email(email):
        raise BadUserInput(
            "Invalid email address", details=[{"field": field, "message": "not an email address"}]
        )
    return email
