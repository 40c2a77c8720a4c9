"""webhook events: parked after too many failures; retention of bodies never processed

A stored webhook event that failed `WEFLUX_WEBHOOK_MAX_ATTEMPTS` times is `PARKED`: the
worker's sweep no longer retries it (`weflux_due_webhook_events` answers `PENDING` and
`FAILED` only), `weflux webhooks replay --parked` does (weflux/services/webhook_queue.py).

`weflux_expire_webhook_bodies` also deletes the bodies never processed: a parked one once
received longer ago than the raw-body retention, one still pending or retried once
received 30 days ago (the ceiling of every retention: docs/lifecycle.md#retention).

`last_error` keeps a failure's class and codes only, never its message (which may quote
a customer's WhatsApp id, from PostgreSQL's `DETAIL: Key (wa_id)=(…)`, or a statement's
parameters): the stored ones are cut to their class (`Class: message` -> `Class`).

The CHECK constraint of `status` is rebuilt (on SQLite by a copy of the table: no foreign
key refers to `webhook_events`). Downgrading makes parked events `FAILED` with no next
attempt, which the earlier sweep never picks up either.

Revision ID: 0026_webhook_parking
Revises: 0025_contact_search_trigrams
Create Date: 2026-12-05 17:10:00 UTC
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0026_webhook_parking"
down_revision: str | None = "0025_contact_search_trigrams"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "webhook_events"
CHECK = "webhook_status"  # ck_webhook_events_webhook_status by the naming convention
STATUSES = ("PENDING", "PROCESSED", "FAILED")
PARKED = "PARKED"

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
NEW_FUNCTION = (
    "weflux_expire_webhook_bodies(expired_before timestamptz, retrying_before timestamptz, "
    "batch integer)",
    "weflux_expire_webhook_bodies(timestamptz, timestamptz, integer)",
    """WITH doomed AS (
             SELECT e.id FROM webhook_events e
             WHERE (e.status = 'PROCESSED' AND e.processed_at < $1)
                OR (e.status = 'PARKED' AND e.received_at < $1)
                OR (e.status IN ('PENDING', 'FAILED') AND e.received_at < $2)
             LIMIT least(greatest($3, 0), 500)),
           gone AS (DELETE FROM webhook_events w USING doomed d WHERE w.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone""",
)
OLD_FUNCTION = (
    "weflux_expire_webhook_bodies(processed_before timestamptz, batch integer)",
    "weflux_expire_webhook_bodies(timestamptz, integer)",
    """WITH doomed AS (
             SELECT e.id FROM webhook_events e
             WHERE e.status = 'PROCESSED' AND e.processed_at < $1
             LIMIT least(greatest($2, 0), 500)),
           gone AS (DELETE FROM webhook_events w USING doomed d WHERE w.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone""",
)
# `Class: message` -> `Class` (a failure's message may hold personal data).
SCRUB = {
    "postgresql": "UPDATE webhook_events SET last_error = split_part(last_error, ': ', 1) "
    "WHERE position(': ' IN last_error) > 0",
    "sqlite": "UPDATE webhook_events SET last_error = substr(last_error, 1, "
    "instr(last_error, ': ') - 1) WHERE instr(last_error, ': ') > 0",
}


def _check(statuses: Sequence[str]) -> None:
    condition = "status IN ({})".format(", ".join(f"'{status}'" for status in statuses))
    with op.batch_alter_table(TABLE, recreate="auto") as batch_op:
        batch_op.drop_constraint(op.f(f"ck_{TABLE}_{CHECK}"), type_="check")
        batch_op.create_check_constraint(CHECK, condition)


def _function(drop: tuple[str, str, str], create: tuple[str, str, str]) -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {drop[1]}")
    op.execute(
        f"CREATE FUNCTION {create[0]} RETURNS integer LANGUAGE sql VOLATILE "
        f"{_DEFINER} AS $fn$ {create[2]} $fn$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {create[1]} FROM PUBLIC")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _check((*STATUSES, PARKED))
    op.execute(SCRUB[dialect])
    if dialect == "postgresql":
        _function(OLD_FUNCTION, NEW_FUNCTION)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _function(NEW_FUNCTION, OLD_FUNCTION)
    op.execute(
        f"UPDATE {TABLE} SET status = 'FAILED', next_attempt_at = NULL "  # noqa: S608
        f"WHERE status = '{PARKED}'"
    )
    _check(STATUSES)
