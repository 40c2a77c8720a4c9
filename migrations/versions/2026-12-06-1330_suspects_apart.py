"""the worker's claims tell suspects apart in SQL: new work never waits behind them

A delivery (media download) claim read the `batch` oldest due rows, and only then, in
Python, left out the suspects (rows whose lease ran out: a message SENDING without a
wamid, a file DOWNLOADING), which the worker claims alone after the batch. A suspect's
due time is its old lease, older than most new rows', so after a crash that left a
batch's worth in flight every batch read was all suspects: nothing new was claimed while
they went, 10 a run.

`weflux_due_outbound_messages` and `weflux_due_media_downloads` gain a third argument,
`suspects`, and a third column, `suspect`: false reads due rows that are not suspects
(up to `batch`, locked) and the first suspect due (unlocked: a hint, so a worker claims
suspects after its batch only when there is one), true the suspects alone (locked; the
worker asks for one). Each arm is gated by a one-time filter on the argument and reads
its own partial index: the batch `ix_messages_outbox` (`ix_media_files_due`), the
suspects the new `ix_messages_in_flight` (`ix_media_files_in_flight`: rows in flight,
few), which every batch's read probes. The in-order rule is unchanged: a message waits
behind any earlier pending one of its conversation, a suspect too.

Rolling upgrade: the two-argument functions stay as they were, so a server of the
previous release keeps claiming as before (suspects filtered in Python) beside new ones;
a later release drops them. Downgrading drops the new functions and indexes.
SQLite: the indexes only (the claims are the app's own statements there).

Revision ID: 0038_suspects_apart
Revises: 0037_keyed_recovery_hashes
Create Date: 2026-12-06 13:30:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0038_suspects_apart"
down_revision: str | None = "0037_keyed_recovery_hashes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
_LIMIT = "LIMIT least(greatest($2, 0), 500)"
# name -> (table, predicate)
INDEXES = {
    "ix_messages_in_flight": ("messages", "status = 'SENDING' AND wa_message_id IS NULL"),
    "ix_media_files_in_flight": ("media_files", "status = 'DOWNLOADING'"),
}

_EARLIER_PENDING = """NOT EXISTS (
         SELECT 1 FROM messages e
         WHERE e.org_id = m.org_id AND e.conversation_id = m.conversation_id
           AND e.id < m.id AND e.direction = 'OUTBOUND'
           AND e.status IN ('QUEUED', 'SENDING'))"""


def _body(table: str, alias: str, fresh: str, suspect: str) -> str:
    """Three arms, each gated by a one-time filter on `$3` (`suspects`), so only those of
    the mode asked for read anything, each from its own index: without it the fresh rows
    (`fresh`: the conditions of a due row that is not a suspect), locked, and the first
    suspect due (`suspect`), unlocked, a hint that the worker should claim suspects after
    the batch; with it the suspects, locked. The third column says which a row is."""
    lock = f"FOR UPDATE OF {alias} SKIP LOCKED"
    arms = [
        ("fresh", f"NOT $3 AND {fresh}", "false", _LIMIT, lock),
        ("hint", f"NOT $3 AND {suspect}", "true", "LIMIT 1", ""),
        ("suspect", f"$3 AND {suspect}", "true", _LIMIT, lock),
    ]
    return "\nUNION ALL\n".join(
        # This module's constants only; the values are the function's arguments.
        f"SELECT * FROM (SELECT {alias}.org_id, {alias}.id, {marker} FROM {table} {alias}\n"  # noqa: S608
        f"     WHERE {where}\n"
        f"     ORDER BY {alias}.next_attempt_at, {alias}.id {limit} {locking}) AS {name}"
        for name, where, marker, limit, locking in arms
    )


_OUTBOUND = " AND m.next_attempt_at <= $1 AND m.direction = 'OUTBOUND' AND " + _EARLIER_PENDING
OUTBOUND = (
    "weflux_due_outbound_messages(at_time timestamptz, batch integer, suspects boolean)",
    "weflux_due_outbound_messages(timestamptz, integer, boolean)",
    "TABLE (org_id uuid, message_id uuid, suspect boolean)",
    _body(
        "messages",
        "m",
        "m.status IN ('QUEUED', 'SENDING')"
        " AND NOT (m.status = 'SENDING' AND m.wa_message_id IS NULL)" + _OUTBOUND,
        "m.status = 'SENDING' AND m.wa_message_id IS NULL" + _OUTBOUND,
    ),
)
MEDIA = (
    "weflux_due_media_downloads(at_time timestamptz, batch integer, suspects boolean)",
    "weflux_due_media_downloads(timestamptz, integer, boolean)",
    "TABLE (org_id uuid, media_id uuid, suspect boolean)",
    _body(
        "media_files",
        "f",
        "f.status IN ('PENDING', 'DOWNLOADING') AND f.status = 'PENDING'"
        " AND f.next_attempt_at <= $1",
        "f.status = 'DOWNLOADING' AND f.next_attempt_at <= $1",
    ),
)


def upgrade() -> None:
    for name, (table, predicate) in INDEXES.items():
        op.create_index(
            name,
            table,
            ["next_attempt_at"],
            postgresql_where=sa.text(predicate),
            sqlite_where=sa.text(predicate),
        )
    if op.get_bind().dialect.name != "postgresql":
        return
    for function, signature, result, body in (OUTBOUND, MEDIA):
        op.execute(
            f"CREATE FUNCTION {function} RETURNS {result} LANGUAGE sql VOLATILE "
            f"{_DEFINER} AS $fn$ {body} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for _, signature, _, _ in (OUTBOUND, MEDIA):
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
