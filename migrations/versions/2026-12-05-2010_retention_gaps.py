"""retention gaps: the sweeps' date indexes; accounts left without a workspace

Indexes, on both engines, for the daily retention's sweeps of one workspace
(weflux/lifecycle/worker.py), which read its whole table without them:

- `ix_sessions_org_id_expires_at`: login sessions expired longer ago than
  `WEFLUX_SESSION_RETENTION`;
- `ix_message_reactions_org_id_created_at`: reactions older than `messageRetentionDays`;
- `ix_audit_events_network` and `ix_security_events_network`, partial: the events whose
  IP address (and user agent) `WEFLUX_AUDIT_NETWORK_RETENTION` has still to blank; a
  blanked row leaves the index, so each day's sweep reads only what it blanks.

Accounts (`users`) with no membership and no pending invitation are deleted: at once by
the step that leaves them so (a member's removal, a workspace's deletion), and by the
daily retention for any left over (`weflux_expire_orphan_users`). An account invited
somewhere (an invitation to its email, neither accepted nor expired) is kept: accepting
it joins with the account and its password. `weflux_delete_orphan_users` gains that
condition.

Revision ID: 0027_retention_gaps
Revises: 0026_webhook_parking
Create Date: 2026-12-05 20:10:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_retention_gaps"
down_revision: str | None = "0026_webhook_parking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_sessions_org_id_expires_at": ("sessions", ["org_id", "expires_at"], None),
    "ix_message_reactions_org_id_created_at": (
        "message_reactions",
        ["org_id", "created_at"],
        None,
    ),
    "ix_audit_events_network": ("audit_events", ["org_id", "created_at"], "ip_address IS NOT NULL"),
    "ix_security_events_network": (
        "security_events",
        ["org_id", "created_at"],
        "ip_address IS NOT NULL OR user_agent IS NOT NULL",
    ),
}

ENGINES = ("postgresql", "sqlite")

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
# An account no workspace holds: no membership, and no invitation to its email still open.
DELETE_ORPHANS = "weflux_delete_orphan_users(uuid[])"
DELETE_ORPHANS_DEFINITION = "weflux_delete_orphan_users(user_ids uuid[])"
DELETE_ORPHANS_BODY = """WITH gone AS (
             DELETE FROM users u WHERE u.id = ANY ($1)
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id)
               AND NOT EXISTS (SELECT 1 FROM invitations i
                               WHERE lower(i.email) = lower(u.email)
                                 AND i.accepted_at IS NULL AND i.expires_at > now())
             RETURNING 1)
           SELECT count(*)::integer FROM gone"""
OLD_DELETE_ORPHANS_BODY = """WITH gone AS (
             DELETE FROM users u WHERE u.id = ANY ($1)
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id)
             RETURNING 1)
           SELECT count(*)::integer FROM gone"""
EXPIRE_ORPHANS = "weflux_expire_orphan_users(timestamptz, timestamptz, integer)"
EXPIRE_ORPHANS_DEFINITION = (
    "weflux_expire_orphan_users(at_time timestamptz, created_before timestamptz, batch integer)"
)
EXPIRE_ORPHANS_BODY = """WITH doomed AS (
             SELECT u.id FROM users u
             WHERE u.created_at < $2
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id)
               AND NOT EXISTS (SELECT 1 FROM invitations i
                               WHERE lower(i.email) = lower(u.email)
                                 AND i.accepted_at IS NULL AND i.expires_at > $1)
             ORDER BY u.created_at, u.id
             LIMIT least(greatest($3, 0), 500)),
           gone AS (DELETE FROM users w USING doomed d WHERE w.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone"""


def _function(definition: str, signature: str, body: str) -> None:
    op.execute(
        f"CREATE OR REPLACE FUNCTION {definition} RETURNS integer LANGUAGE sql VOLATILE "
        f"{_DEFINER} AS $fn$ {body} $fn$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")


def upgrade() -> None:
    for name, (table, columns, where) in INDEXES.items():
        partial = {} if where is None else {f"{engine}_where": sa.text(where) for engine in ENGINES}
        op.create_index(name, table, columns, **partial)
    if op.get_bind().dialect.name != "postgresql":
        return
    _function(DELETE_ORPHANS_DEFINITION, DELETE_ORPHANS, DELETE_ORPHANS_BODY)
    _function(EXPIRE_ORPHANS_DEFINITION, EXPIRE_ORPHANS, EXPIRE_ORPHANS_BODY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {EXPIRE_ORPHANS}")
        _function(DELETE_ORPHANS_DEFINITION, DELETE_ORPHANS, OLD_DELETE_ORPHANS_BODY)
    for name, (table, _columns, _where) in INDEXES.items():
        op.drop_index(name, table_name=table)
