"""`Secret` masks itself everywhere; only `reveal()` hands out the plaintext."""

from __future__ import annotations

import copy
import json
import pickle

import pydantic
import pytest
from graphql import GraphQLString
from pydantic_core import PydanticSerializationError

from tests.fixtures.secrets import unregistered_value
from weflux.crypto.secret import Secret

MASK = "********"


def test_reveal_is_the_only_way_out() -> None:
    value = unregistered_value()
    secret = Secret(value)
    assert secret.reveal() == value
    assert repr(secret) == "Secret('********')"
    assert str(secret) == MASK
    assert f"{secret}" == MASK
    assert f"{secret!r}" == "Secret('********')"
    assert f"{secret:>10}" == "  " + MASK
    assert "%s" % secret == MASK  # noqa: UP031
    assert "%r" % secret == "Secret('********')"  # noqa: UP031
    assert "{}".format(secret) == MASK  # noqa: UP032
    assert value not in repr([secret, {"k": secret}])


def test_json_refuses_it_and_default_str_masks_it() -> None:
    secret = Secret(unregistered_value())
    with pytest.raises(TypeError):
        json.dumps(secret)
    with pytest.raises(TypeError):
        json.dumps({"token": secret})
    assert json.dumps({"token": secret}, default=str) == '{"token": "********"}'


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_it_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(unregistered_value()), protocol=protocol)


def test_copies_share_it() -> None:
    secret = Secret(unregistered_value())
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"s": [secret]})["s"][0] is secret


def test_equality_with_secrets_and_strings() -> None:
    value = unregistered_value()
    secret = Secret(value)
    assert secret == value
    assert value == secret
    assert secret == Secret(value)
    assert secret != Secret(value + "x")
    assert secret != value[:-1]
    assert secret != 42
    assert Secret("ü-ñ-中文") == "ü-ñ-中文"


def test_it_is_unhashable_and_truthy_when_non_empty() -> None:
    with pytest.raises(TypeError):
        hash(Secret(unregistered_value()))
    assert Secret("x")
    assert not Secret("")


def test_it_wraps_only_strings() -> None:
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]
    with pytest.raises((AttributeError, TypeError)):
        vars(Secret(unregistered_value()))


def test_pydantic_accepts_it_and_serialises_it_masked() -> None:
    class Credentials(pydantic.BaseModel):
        token: Secret

    value = unregistered_value()
    model = Credentials(token=value)
    assert isinstance(model.token, Secret)
    assert model.token.reveal() == value
    assert model.model_dump() == {"token": MASK}
    assert model.model_dump(mode="json") == {"token": MASK}
    assert value not in model.model_dump_json()
    assert value not in repr(model)
    assert value not in str(model)
    assert Credentials.model_json_schema()["properties"]["token"]["writeOnly"] is True
    with pytest.raises(pydantic.ValidationError):
        Credentials(token=123)


def test_pydantic_without_a_declared_type_does_not_leak_it() -> None:
    class Loose(pydantic.BaseModel):
        value: object

    value = unregistered_value()
    model = Loose(value=Secret(value))
    assert value not in repr(model)
    try:
        dumped = model.model_dump_json()
    except PydanticSerializationError:
        return
    assert value not in dumped


def test_a_graphql_string_shows_the_mask() -> None:
    value = unregistered_value()
    assert GraphQLString.serialize(Secret(value)) == MASK
