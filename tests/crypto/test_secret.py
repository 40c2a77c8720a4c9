"""`Secret` masks itself everywhere; the log filter scrubs revealed secrets as a backstop."""

from __future__ import annotations

import copy
import io
import json
import logging
import pickle
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pydantic
import pytest
from graphql import GraphQLString
from pydantic_core import PydanticSerializationError

from weflux.crypto import (
    REDACTED,
    RedactionRegistry,
    Secret,
    SecretRedactingFilter,
    install_redaction,
    redact,
    register_secret,
)
from weflux.logs import ConsoleFormatter, JsonFormatter, RequestIdFilter

MASK = "********"


def _token() -> str:
    """A value no other test registers."""
    return "tok_" + secrets.token_urlsafe(24)


# --- Secret -----------------------------------------------------------------------------


def test_reveal_is_the_only_way_out() -> None:
    value = _token()
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
    secret = Secret(_token())
    with pytest.raises(TypeError):
        json.dumps(secret)
    with pytest.raises(TypeError):
        json.dumps({"token": secret})
    assert json.dumps({"token": secret}, default=str) == '{"token": "********"}'


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_it_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(_token()), protocol=protocol)


def test_copies_share_it() -> None:
    secret = Secret(_token())
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"s": [secret]})["s"][0] is secret


def test_equality_with_secrets_and_strings() -> None:
    value = _token()
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
        hash(Secret(_token()))
    assert Secret("x")
    assert not Secret("")


def test_it_wraps_only_strings() -> None:
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]
    with pytest.raises((AttributeError, TypeError)):
        vars(Secret(_token()))


def test_pydantic_accepts_it_and_serialises_it_masked() -> None:
    class Credentials(pydantic.BaseModel):
        token: Secret

    value = _token()
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

    value = _token()
    model = Loose(value=Secret(value))
    assert value not in repr(model)
    try:
        dumped = model.model_dump_json()
    except PydanticSerializationError:
        return
    assert value not in dumped


def test_a_graphql_string_shows_the_mask() -> None:
    value = _token()
    assert GraphQLString.serialize(Secret(value)) == MASK


# --- the registry -----------------------------------------------------------------------


def test_registered_values_are_redacted_in_every_common_spelling() -> None:
    value = _token() + "/+ 'q\"\\é"
    registry = RedactionRegistry()
    registry.register(value)
    texts = [
        f"plain {value} text",
        f"in a repr: {{'token': {value!r}}}",
        f"in json: {json.dumps({'token': value})}",
        f"in json, utf-8: {json.dumps({'token': value}, ensure_ascii=False)}",
        f"in a url: https://example.com/?access_token={quote(value, safe='')}&x=1",
        f"twice {value}{value}",
    ]
    for text in texts:
        redacted = registry.redact(text)
        assert REDACTED in redacted
        assert value not in redacted
        assert value[:12] not in redacted
    assert registry.redact("nothing here") == "nothing here"


def test_short_values_are_not_registered() -> None:
    registry = RedactionRegistry()
    registry.register("12345")
    assert len(registry) == 0
    assert registry.redact("pin 12345") == "pin 12345"


def test_the_longest_secret_wins() -> None:
    registry = RedactionRegistry()
    registry.register("abcdef")
    registry.register("abcdefghij")
    assert registry.redact("x abcdefghij y abcdef z") == f"x {REDACTED} y {REDACTED} z"


def test_the_registry_is_bounded_and_forgets_the_least_recent() -> None:
    registry = RedactionRegistry(max_size=3)
    for value in ("first-secret", "second-secret", "third-secret"):
        registry.register(value)
    registry.register("first-secret")  # seen again: now the most recent
    registry.register("fourth-secret")
    assert len(registry) == 3
    assert registry.redact("second-secret") == "second-secret"
    for value in ("first-secret", "third-secret", "fourth-secret"):
        assert registry.redact(value) == REDACTED


def test_the_registry_keeps_no_plaintext() -> None:
    registry = RedactionRegistry()
    value = _token()
    registry.register(value)
    assert value not in repr(registry.__dict__)
    with pytest.raises(TypeError):
        pickle.dumps(registry)


def test_every_secret_is_registered_process_wide() -> None:
    value = _token()
    assert redact(value) == value
    Secret(value)
    assert redact(f"x {value} y") == f"x {REDACTED} y"
    other = _token()
    register_secret(other)
    assert redact(other) == REDACTED


def test_redaction_of_large_text_with_a_full_registry() -> None:
    """A full registry still finds the one secret in a long line (its speed: bench.micro)."""
    registry = RedactionRegistry()
    for _ in range(10_000):
        registry.register(secrets.token_hex(20))
    value = _token()
    registry.register(value)
    text = ("an ordinary log line with ids 0123456789 and words " * 40) + value
    redacted = registry.redact(text)
    assert redacted.endswith(REDACTED)
    assert value not in redacted


# --- the logging filter -----------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines through our formatter, with the redacting filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(SecretRedactingFilter())
    logger = logging.getLogger(f"tests.crypto.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_filter_redacts_message_args_extras_and_exceptions(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    value = Secret(_token()).reveal()
    logger.info(f"token is {value}")
    logger.info("token is %s (%d)", value, 7)
    logger.info("token is %(token)s", {"token": value})
    logger.info(
        "connected",
        extra={"token": value, "request": {"headers": [f"Bearer {value}"], "n": 1}},
    )
    try:
        raise ValueError(f"Meta refused the token {value}")
    except ValueError:
        logger.exception("the health check failed")
    try:
        try:
            raise KeyError(value)
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError:
        logger.error("chained", exc_info=True)
    logger.info("stack", stack_info=True, extra={"note": "plain"})

    output = stream.getvalue()
    assert value not in output
    lines = _lines(stream)
    assert lines[0]["msg"] == f"token is {REDACTED}"
    assert lines[1]["msg"] == f"token is {REDACTED} (7)"
    assert lines[2]["msg"] == f"token is {REDACTED}"
    assert lines[3]["token"] == REDACTED
    assert lines[3]["request"] == {"headers": [f"Bearer {REDACTED}"], "n": 1}
    exc = str(lines[4]["exc"])
    assert f"ValueError: Meta refused the token {REDACTED}" in exc
    assert "Traceback (most recent call last)" in exc
    assert "test_the_filter_redacts_message_args_extras_and_exceptions" in exc
    chained = str(lines[5]["exc"])
    assert "KeyError" in chained
    assert "RuntimeError: wrapped" in chained
    assert lines[6]["note"] == "plain"


def test_the_record_itself_is_rewritten_for_every_handler_after_the_filter(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, _ = json_log
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    value = Secret(_token()).reveal()
    logger.info("token %s", value)
    logger.info("nothing secret %s", "here")
    redacted, untouched = seen
    assert redacted.msg == f"token {REDACTED}"
    assert redacted.args == ()
    # Records without secrets keep their structure (message grouping relies on it).
    assert untouched.msg == "nothing secret %s"
    assert untouched.args == ("here",)


def test_the_console_formatter_sees_redacted_text_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(SecretRedactingFilter())
    logger = logging.getLogger(f"tests.crypto.console.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.propagate = False
    value = Secret(_token()).reveal()
    try:
        raise ValueError(value)
    except ValueError:
        logger.exception("failed for %s", value, extra={"detail": value})
    output = stream.getvalue()
    assert value not in output
    assert output.count(REDACTED) >= 3


def test_a_malformed_logging_call_does_not_leak_through_the_error_report(
    json_log: tuple[logging.Logger, io.StringIO],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, stream = json_log
    # Only our handler: pytest's own capture handler turns logging errors into failures.
    monkeypatch.setattr(logger, "handlers", logger.handlers[:1])
    value = Secret(_token()).reveal()
    logger.info("%d items", value)  # a bug: the arg does not fit the format
    captured = capsys.readouterr()
    assert "--- Logging error ---" in captured.err
    assert value not in captured.err
    assert value not in stream.getvalue()


def test_if_redaction_fails_the_text_is_withheld(
    json_log: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = json_log
    value = Secret(_token()).reveal()

    def broken(text: str) -> str:
        raise RuntimeError("boom")

    handler = logger.handlers[0]
    redacting = next(f for f in handler.filters if isinstance(f, SecretRedactingFilter))
    monkeypatch.setattr(redacting.registry, "redact", broken)
    logger.info("token %s", value)
    assert value not in stream.getvalue()
    assert _lines(stream)[0]["msg"] == "log message withheld: redaction failed"


def test_install_redaction_filters_every_handler_once() -> None:
    logger = logging.getLogger(f"tests.crypto.install.{secrets.token_hex(4)}")
    logger.propagate = False
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(stream) for stream in streams]
    for handler in handlers:
        logger.addHandler(handler)
    install_redaction(logger)
    install_redaction(logger)
    for handler in handlers:
        assert sum(isinstance(f, SecretRedactingFilter) for f in handler.filters) == 1
    value = Secret(_token()).reveal()
    logging.getLogger(f"{logger.name}.child").warning("leaked %s", value)
    for stream in streams:
        assert stream.getvalue() == f"leaked {REDACTED}\n"


def test_install_redaction_defaults_to_the_root_handlers() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        install_redaction()
        assert any(isinstance(f, SecretRedactingFilter) for f in handler.filters)
        value = Secret(_token()).reveal()
        logging.getLogger("weflux.somewhere").warning("token %s", value)
        assert value not in stream.getvalue()
    finally:
        root.removeHandler(handler)
        for other in root.handlers:
            for existing in list(other.filters):
                if isinstance(existing, SecretRedactingFilter):
                    other.removeFilter(existing)
