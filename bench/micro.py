"""Two hot paths against their budgets: the webhook parser and log redaction.

    .venv/bin/python -m bench.micro [--rounds 10]

- Parsing one POST of 1,000 inbound messages of mixed kinds (`parse_webhook`): best of
  `--rounds`, budget 500 ms (Meta's top tier is 1,000 messages/s per number).
- Redacting a 2 KB log line with a full registry of 10,000 secrets
  (`RedactionRegistry.redact`, run on every log record): mean of `--rounds`, budget 50 ms.

Exits 1 when a figure is over its budget. These were timed assertions in the tests; a
timing belongs here, where the machine's load is part of the reading.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time

from tests.fixtures import webhooks as wh
from weflux.crypto.redaction import RedactionRegistry
from weflux.whatsapp.parser import parse_webhook

PARSE_BUDGET = 0.5
REDACT_BUDGET = 0.05


def time_parsing(rounds: int) -> float:
    body = wh.thousand_message_body()
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        parsed = parse_webhook(body)
        timings.append(time.perf_counter() - started)
    assert len(parsed.messages) == 1000
    return min(timings)


def time_redaction(rounds: int) -> float:
    registry = RedactionRegistry()
    for _ in range(10_000):
        registry.register(secrets.token_hex(20))
    value = "tok_" + secrets.token_urlsafe(24)
    registry.register(value)
    text = ("an ordinary log line with ids 0123456789 and words " * 40) + value
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        redacted = registry.redact(text)
        timings.append(time.perf_counter() - started)
    assert value not in redacted
    return statistics.mean(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    over = 0
    for name, seconds, budget in (
        ("parse 1,000 messages (best)", time_parsing(args.rounds), PARSE_BUDGET),
        ("redact, full registry (mean)", time_redaction(args.rounds), REDACT_BUDGET),
    ):
        verdict = "ok" if seconds < budget else "OVER BUDGET"
        over += seconds >= budget
        print(f"{name:32} {seconds * 1000:8.2f} ms  (budget {budget * 1000:.0f} ms)  {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
