"""The log filter scrubs revealed secrets from every record, as a backstop."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from tests.fixtures.secrets import unregistered_value
from weflux.crypto.redaction import REDACTED
from weflux.crypto.secret import Secret
from weflux.logs import (
    ConsoleFormatter,
    JsonFormatter,
    RequestIdFilter,
    SecretRedactingFilter,
    install_redaction,
)

MASK = "********"


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
    value = Secret(unregistered_value()).reveal()
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
    value = Secret(unregistered_value()).reveal()
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
    value = Secret(unregistered_value()).reveal()
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
    value = Secret(unregistered_value()).reveal()
    logger.info("%d items", value)  # a bug: the arg does not fit the format
    captured = capsys.readouterr()
    assert "--- Logging error ---" in captured.err
    assert value not in captured.err
    assert value not in stream.getvalue()


def test_if_redaction_fails_the_text_is_withheld(
    json_log: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = json_log
    value = Secret(unregistered_value()).reveal()

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
    value = Secret(unregistered_value()).reveal()
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
        value = Secret(unregistered_value()).reveal()
        logging.getLogger("weflux.somewhere").warning("token %s", value)
        assert value not in stream.getvalue()
    finally:
        root.removeHandler(handler)
        for other in root.handlers:
            for existing in list(other.filters):
                if isinstance(existing, SecretRedactingFilter):
                    other.removeFilter(existing)
