"""webhook_events' policy: a transaction may name several events (a queue worker's batch)

Revision ID: 0036_webhook_event_batches
Revises: 0035_live_webhook_key_digests
Create Date: 2026-12-06 05:15:00 UTC

Row-level security let a transaction see and write the one webhook event it names
(`app.webhook_event_id`, migration 0007's `named_event`). A queue worker now processes a
workspace's queued events several per transaction (one feed lock and one commit for
many: weflux.services.webhook_queue), so the setting may hold several ids joined by
commas (weflux.auth.scoping). The policy reads it as an array; one id reads as before,
and an unset or empty setting names nothing. The ids are still the capability: they come
from the intake (which makes them) or from `weflux_due_webhook_events`.

SQLite: unchanged (no row-level security).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0036_webhook_event_batches"
down_revision: str | None = "0035_live_webhook_key_digests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "webhook_events"
POLICY = "named_event"
ONE = "id = NULLIF(current_setting('app.webhook_event_id', true), '')::uuid"
SEVERAL = (
    "id = ANY (string_to_array(NULLIF(current_setting('app.webhook_event_id', true), ''), "
    "',')::uuid[])"
)


def _policy(predicate: str) -> None:
    op.execute(f"ALTER POLICY {POLICY} ON {TABLE} USING ({predicate}) WITH CHECK ({predicate})")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policy(SEVERAL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policy(ONE)
