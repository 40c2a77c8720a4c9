"""tenancy: no switch opens every workspace; explicit cross-workspace functions

The tenant policies lose their `app.all_workspaces` escape (any statement of the app's
role could set it); the migrating role, which owns the tables, gets a policy of its own;
`users`, `webhook_events` and `pending_signups` get row-level security; and the cross-workspace work of
the app (webhook routing, the worker's sweeps, login, invitations, password changes)
goes through SECURITY DEFINER functions that each answer one question with ids.
See docs/security/tenancy.md. Nothing to do on SQLite.

Revision ID: 0007_tenancy
Revises: 0006_contact_profile_name
Create Date: 2026-12-04 13:00:00 UTC
"""

from collections.abc import Sequence

from alembic import op

from weflux.models.rls import OWNER_POLICY, POLICY, create_owner_policy, create_tenant_policy

revision: str = "0007_tenancy"
down_revision: str | None = "0006_contact_profile_name"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Table -> the column holding its workspace, as migrations 0001-0004 made them.
TENANT_TABLES = {
    "organizations": "id",
    "memberships": "org_id",
    "sessions": "org_id",
    "audit_events": "org_id",
    "invitations": "org_id",
    "whatsapp_accounts": "org_id",
    "smtp_settings": "org_id",
    "contacts": "org_id",
    "conversations": "org_id",
    "messages": "org_id",
    "template_status_events": "org_id",
}
# The predicate of 0001-0004, restored by the downgrade.
LEGACY_PREDICATE = (
    "{column} = NULLIF(current_setting('app.org_id', true), '')::uuid "
    "OR current_setting('app.all_workspaces', true) = 'on'"
)
# The transaction's workspace, and the webhook event it names (weflux.auth.scoping):
# the event's id is the capability.
WORKSPACE = "NULLIF(current_setting('app.org_id', true), '')::uuid"
NAMED_EVENT = "NULLIF(current_setting('app.webhook_event_id', true), '')::uuid"
NAMED_SIGNUP = "token_hash = NULLIF(current_setting('app.signup_token_hash', true), '')"
MEMBER_OF_WORKSPACE = (  # constants only
    f"EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.id AND m.org_id = {WORKSPACE})"  # noqa: S608
)

# The deliberate policies of the two global tables (besides the owner's).
GLOBAL_TABLE_POLICIES = {
    # users: one person, several workspaces. The app role sees and changes the members
    # of the transaction's workspace, and creates accounts (signup, invitations) before
    # their first membership; finding an account by email is weflux_account_by_email.
    "users": {
        "workspace_members": f"FOR SELECT USING ({MEMBER_OF_WORKSPACE})",
        "workspace_members_update": (
            f"FOR UPDATE USING ({MEMBER_OF_WORKSPACE}) WITH CHECK ({MEMBER_OF_WORKSPACE})"
        ),
        "new_accounts": "FOR INSERT WITH CHECK (true)",
    },
    # webhook_events: a body may concern any workspace and is routed only once parsed.
    # A transaction sees and writes the one event it names; ids come from the intake
    # (which makes them) or from weflux_due_webhook_events.
    "webhook_events": {
        "named_event": f"USING (id = {NAMED_EVENT}) WITH CHECK (id = {NAMED_EVENT})",
    },
    # pending_signups: sign-ups not yet confirmed, before any workspace exists. Anyone
    # may file one; a transaction reads and deletes only the one whose token it holds
    # (`app.signup_token_hash`, set by weflux.services.signup), and expired ones.
    "pending_signups": {
        "new_signups": "FOR INSERT WITH CHECK (true)",
        "named_or_expired": f"FOR SELECT USING ({NAMED_SIGNUP} OR expires_at <= now())",
        "named_or_expired_delete": f"FOR DELETE USING ({NAMED_SIGNUP} OR expires_at <= now())",
    },
}

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
# name(arguments) -> (result, volatility, body). Each answers one question with ids.
FUNCTIONS = {
    "weflux_webhook_channel(webhook_key text)": (
        "TABLE (org_id uuid, account_id uuid)",
        "STABLE",
        """SELECT a.org_id, a.id FROM whatsapp_accounts a
           WHERE a.webhook_key = $1 AND a.disconnected_at IS NULL""",
    ),
    "weflux_webhook_routes(phone_number_ids text[], business_account_ids text[], "
    "keyed_account_id uuid)": (
        "TABLE (org_id uuid, account_id uuid, phone_number_id text, "
        "business_account_id text, display_phone_number text)",
        "STABLE",
        """SELECT a.org_id, a.id, a.phone_number_id::text, a.business_account_id::text,
                  a.display_phone_number::text
           FROM whatsapp_accounts a
           WHERE a.disconnected_at IS NULL
             AND (a.phone_number_id = ANY ($1) OR a.business_account_id = ANY ($2))
             AND ($3 IS NULL
                  OR a.org_id = (SELECT k.org_id FROM whatsapp_accounts k WHERE k.id = $3))""",
    ),
    "weflux_due_webhook_events(at_time timestamptz, settled_before timestamptz, batch integer)": (
        "SETOF uuid",
        "STABLE",
        """SELECT e.id FROM webhook_events e
           WHERE e.status <> 'PROCESSED'
             AND ((e.status = 'PENDING' AND e.received_at < $2)
                  OR (e.status = 'FAILED' AND e.next_attempt_at <= $1))
           ORDER BY e.received_at
           LIMIT least(greatest($3, 0), 500)""",
    ),
    "weflux_due_outbound_messages(at_time timestamptz, batch integer)": (
        "TABLE (org_id uuid, message_id uuid)",
        "VOLATILE",
        """SELECT m.org_id, m.id FROM messages m
           WHERE m.status IN ('QUEUED', 'SENDING')
             AND m.next_attempt_at <= $1
             AND m.direction = 'OUTBOUND'
             AND NOT EXISTS (
               SELECT 1 FROM messages e
               WHERE e.org_id = m.org_id AND e.conversation_id = m.conversation_id
                 AND e.id < m.id AND e.direction = 'OUTBOUND'
                 AND e.status IN ('QUEUED', 'SENDING'))
           ORDER BY m.next_attempt_at, m.id
           LIMIT least(greatest($2, 0), 500)
           FOR UPDATE OF m SKIP LOCKED""",
    ),
    "weflux_due_health_checks(due_before timestamptz, batch integer)": (
        "TABLE (org_id uuid, account_id uuid)",
        "VOLATILE",
        """SELECT a.org_id, a.id FROM whatsapp_accounts a
           WHERE a.disconnected_at IS NULL AND a.access_token_enc IS NOT NULL
             AND (a.health_checked_at IS NULL OR a.health_checked_at < $1)
           ORDER BY a.health_checked_at ASC NULLS FIRST
           LIMIT least(greatest($2, 0), 500)
           FOR UPDATE OF a SKIP LOCKED""",
    ),
    "weflux_account_by_email(email text)": (
        "TABLE (user_id uuid, password_hash text)",
        "STABLE",
        """SELECT u.id, u.password_hash::text FROM users u WHERE lower(u.email) = lower($1)""",
    ),
    "weflux_user_workspaces(user_id uuid)": (
        "TABLE (org_id uuid, name text)",
        "STABLE",
        """SELECT o.id, o.name::text
           FROM memberships m JOIN organizations o ON o.id = m.org_id
           WHERE m.user_id = $1
           ORDER BY m.created_at, m.id""",
    ),
    "weflux_invitation_by_token(token_hash text)": (
        "TABLE (org_id uuid, invitation_id uuid)",
        "STABLE",
        """SELECT i.org_id, i.id FROM invitations i WHERE i.token_hash = $1""",
    ),
    "weflux_user_sessions(user_id uuid)": (
        "TABLE (org_id uuid, session_id uuid)",
        "STABLE",
        """SELECT s.org_id, s.id FROM sessions s
           WHERE s.user_id = $1 AND s.revoked_at IS NULL""",
    ),
}


def _signature(name: str) -> str:
    """`f(a text, b uuid)` -> `f(text, uuid)`, for DROP and REVOKE."""
    function, _, arguments = name.partition("(")
    types = [arg.strip().split(" ", 1)[1] for arg in arguments.rstrip(")").split(",")]
    return f"{function}({', '.join(types)})"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in TENANT_TABLES.items():
        create_tenant_policy(table, column)
        create_owner_policy(table)
    for table, policies in GLOBAL_TABLE_POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for name, definition in policies.items():
            op.execute(f"CREATE POLICY {name} ON {table} {definition}")
        create_owner_policy(table)
    for name, (result, volatility, body) in FUNCTIONS.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {name} RETURNS {result} LANGUAGE sql {volatility} "
            f"{_DEFINER} AS $fn$ {body} $fn$"
        )
        # Executable by the app's role only (granted by weflux.migrate).
        op.execute(f"REVOKE ALL ON FUNCTION {_signature(name)} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {_signature(name)}")
    for table, policies in GLOBAL_TABLE_POLICIES.items():
        for name in (*policies, OWNER_POLICY):
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table, column in TENANT_TABLES.items():
        predicate = LEGACY_PREDICATE.format(column=column)
        op.execute(f"DROP POLICY IF EXISTS {OWNER_POLICY} ON {table}")
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(
            f"CREATE POLICY {POLICY} ON {table} USING ({predicate}) WITH CHECK ({predicate})"
        )
