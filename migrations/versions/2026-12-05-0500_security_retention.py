"""security retention: platform security events and sent alerts expire

Platform security events (`platform_security_events`: IP addresses and user agents of no
one workspace) and the alerts outbox's finished rows (`security_alerts`: sent or
suppressed) are deleted by the lifecycle worker's daily retention once older than
`WEFLUX_SECURITY_EVENT_RETENTION`. The app's role may only insert platform events, so
the deletions are SECURITY DEFINER functions, like the worker's other crossings
(docs/security/tenancy.md).

Revision ID: 0015_security_retention
Revises: 0014_message_templates
Create Date: 2026-12-05 05:00:00 UTC
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015_security_retention"
down_revision: str | None = "0014_message_templates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
FUNCTIONS = {
    "weflux_expire_platform_security_events(created_before timestamptz, batch integer)": (
        """WITH doomed AS (
             SELECT e.id FROM platform_security_events e WHERE e.created_at < $1
             LIMIT least(greatest($2, 0), 500)),
           gone AS (DELETE FROM platform_security_events p USING doomed d
                    WHERE p.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone"""
    ),
    "weflux_expire_security_alerts(created_before timestamptz, batch integer)": (
        """WITH doomed AS (
             SELECT a.id FROM security_alerts a
             WHERE a.created_at < $1 AND a.status <> 'pending'
             LIMIT least(greatest($2, 0), 500)),
           gone AS (DELETE FROM security_alerts s USING doomed d WHERE s.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone"""
    ),
}


def _signature(name: str) -> str:
    function, _, arguments = name.partition("(")
    types = [arg.strip().split(" ", 1)[1] for arg in arguments.rstrip(")").split(",")]
    return f"{function}({', '.join(types)})"


def upgrade() -> None:
    op.create_index(op.f("ix_security_alerts_created_at"), "security_alerts", ["created_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, body in FUNCTIONS.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {name} RETURNS integer LANGUAGE sql VOLATILE "
            f"{_DEFINER} AS $fn$ {body} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {_signature(name)} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {_signature(name)}")
    op.drop_index(op.f("ix_security_alerts_created_at"), table_name="security_alerts")
