"""The one rule for a phone number a person types: createContact, startConversation, the
sandbox page and `weflux simulate message --from` all ask `e164`.

Kept free of the database and of Starlette so the `weflux simulate` command can import it
cheaply. WhatsApp ids that Meta sends (`wa_id`) are not checked here: they are taken as
Meta sends them (weflux.services.ingest).
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import ValidationResult

# The one wording for a number refused, wherever it was typed.
INVALID_PHONE_NUMBER = (
    "Enter a valid phone number in international format, with its country code, "
    "such as +16505551234"
)
# The rule in a sentence, for the GraphQL inputs that take a typed number.
TYPED_PHONE_NUMBER = (
    "International format with the country code, such as +16505551234 (the + optional; "
    "spaces, dashes, dots and parentheses ignored): a country code that exists and a length "
    "that country dials, at most 15 digits; stored E.164. Otherwise BAD_USER_INPUT on "
    "phoneNumber."
)
E164_MAX_DIGITS = 15
_SEPARATORS = re.compile(r"[ \t\-().]")
# A digit of any script (a phone keyboard's: fullwidth, Arabic-Indic...) reads as ASCII.
_ANY_DIGIT = re.compile(r"\d")
_TYPED = re.compile(r"^\+?[0-9]{1,20}$")


def e164(value: object) -> str | None:
    """The E.164 form (`+16505551234`) of a typed phone number, or None when refused.

    International format, the `+` optional (no region is guessed); spaces, dashes, dots
    and parentheses are ignored, another script's digits read as ASCII, a national trunk
    prefix after the country code is dropped (`+44 (0)20 ...`). Accepted: a country code
    that exists and a length that country dials (phonenumbers' `is_possible_number`, a
    local-only length refused), at most 15 digits in all. Not asked: whether the range is
    assigned (`is_valid_number`), which refuses real numbers newer than the library's data
    and the 555 numbers of the sandbox.
    """
    if not isinstance(value, str):
        return None
    typed = _ANY_DIGIT.sub(lambda digit: str(int(digit[0])), _SEPARATORS.sub("", value.strip()))
    if not _TYPED.match(typed):
        return None
    try:
        parsed = phonenumbers.parse("+" + typed.removeprefix("+"), None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(parsed) != ValidationResult.IS_POSSIBLE:
        return None
    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    # Some countries' data allows national lengths that E.164 (15 digits at most) does not.
    return number if len(number) <= 1 + E164_MAX_DIGITS else None
