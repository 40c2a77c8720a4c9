"""Secret values that refuse to leak.

A `Secret` masks itself in `repr`, `str`, f-strings, `%s`, JSON (it raises), pickle
(it raises), pydantic serialisation and GraphQL string output; only `reveal()` hands
out the plaintext. Every Secret also registers its plaintext with the process-wide
redaction registry (`weflux.crypto.redaction`), whose log filter (`weflux.logs`) scrubs
it from log records, in case a revealed value is ever logged by mistake.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from weflux.crypto.redaction import registry

MASK = "********"


def _mask(_value: object) -> str:
    return MASK


class Secret:
    """A secret string: masked everywhere, except through `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret wraps a str, not {type(value).__name__}")
        self._value = value
        registry.register(value)

    def reveal(self) -> str:
        """The plaintext; use it where it is needed and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return format(MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other_value = other._value
        elif isinstance(other, str):
            other_value = other
        else:
            return NotImplemented
        # Constant time: a comparison must not tell an attacker how much of a guess was right.
        return hmac.compare_digest(
            self._value.encode("utf-8", "surrogatepass"),
            other_value.encode("utf-8", "surrogatepass"),
        )

    # Unhashable: equal to a str, a Secret would need the str's hash, an oracle on its value.
    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it sealed with weflux.crypto instead")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it sealed with weflux.crypto instead")

    def __copy__(self) -> Secret:
        return self  # immutable: copies may share it (and copy must not go through pickle)

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    @classmethod
    def _coerce(cls, value: Any) -> Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(value)
        raise ValueError("expected a string")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Pydantic fields of this type accept a str and always serialise masked."""
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _mask, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """A write-only password string, as pydantic's own SecretStr."""
        return {"type": "string", "format": "password", "writeOnly": True}
