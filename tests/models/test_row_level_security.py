"""Tenant isolation at the database layer: PostgreSQL row-level security, alone.

Each test goes around the ORM filter (raw SQL, or no workspace in the ORM) and shows
that PostgreSQL itself refuses to show or write another workspace's rows.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import CursorResult, text
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor, create_conversation, create_message
from weflux.config import ConfigError
from weflux.db import Database, maintenance_database
from weflux.models import (
    AuthSession,
    Invitation,
    MessageDirection,
    MessageStatus,
    Organization,
    Role,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    utcnow,
    workspace_models,
)
from weflux.services.audit import Action, record

pytestmark = postgres_only

_COUNT = text("SELECT count(*) FROM memberships")


async def test_app_role_is_neither_superuser_nor_bypassrls(db: Database) -> None:
    role = await db.role_check()
    assert role is not None
    assert not role.superuser
    assert not role.bypass_rls
    assert role.subject_to_rls


async def test_every_workspace_table_has_rls_enabled_and_forced(owner_db: Database) -> None:
    tables = [model.__tablename__ for model in workspace_models()] + [Organization.__tablename__]
    async with owner_db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                    "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
                    "FROM pg_class c WHERE c.relname = ANY(:tables)"
                ),
                {"tables": tables},
            )
        ).all()
    found = {row[0]: row[1:] for row in rows}
    assert set(found) == set(tables)
    for table, (enabled, forced, policies) in found.items():
        assert enabled, table
        assert forced, table
        assert policies >= 1, table


async def test_every_table_has_forced_row_level_security(owner_db: Database) -> None:
    """Given the migrated schema,
    when its tables are listed,
    then each (but Alembic's own) has row-level security enabled and forced: a table
    without it would show every workspace's rows to the app's role. A new global table
    needs a deliberate policy, as `users` and `webhook_events` have (docs/security/tenancy.md)."""
    async with owner_db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
                    "AND c.relname <> 'alembic_version' "
                    "AND NOT (c.relrowsecurity AND c.relforcerowsecurity)"
                )
            )
        ).all()
    assert [row[0] for row in rows] == []


async def test_raw_sql_without_workspace_sees_no_rows(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with owner_db.engine.connect() as conn:  # the owner is not the app: it sees both
        assert (await conn.execute(_COUNT)).scalar_one() == 2
    async with db.engine.connect() as conn:
        assert (await conn.execute(_COUNT)).scalar_one() == 0
        assert (await conn.execute(text("SELECT count(*) FROM organizations"))).scalar_one() == 0


async def test_raw_sql_in_a_workspace_sees_only_that_workspace(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        rows = (await sql(session, "SELECT id FROM memberships")).all()
    assert [row[0] for row in rows] == [admin.membership.id]


async def test_raw_insert_into_another_workspace_is_refused(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(admin.org_id) as session:
            await sql(
                session,
                "INSERT INTO audit_events (id, org_id, action, severity, details, created_at) "
                "VALUES (:id, :org, 'x', 'info', '{}', now())",
                {"id": uuid.uuid4(), "org": other_admin.org_id},
            )


async def test_raw_update_of_another_workspace_changes_nothing(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        result = await sql(
            session,
            "UPDATE memberships SET role = 'AGENT' WHERE id = :id",
            {"id": other_admin.membership.id},
        )
        assert result.rowcount == 0
    async with owner_db.engine.connect() as conn:
        role = (
            await conn.execute(
                text("SELECT role FROM memberships WHERE id = :id"),
                {"id": other_admin.membership.id},
            )
        ).scalar_one()
    assert role == "ADMIN"


async def test_workspace_setting_ends_with_the_transaction(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """set_config(..., true) is transaction-local: the next user of a pooled
    connection starts with no workspace."""
    single = Database(str(db.url.render_as_string(hide_password=False)), pool_size=1)
    try:
        async with single.session(admin.org_id) as session:
            await sql(session, "SELECT 1")
        async with single.engine.connect() as conn:
            setting = (
                await conn.execute(text("SELECT current_setting('app.org_id', true)"))
            ).scalar_one()
            assert setting in (None, "")
            assert (await conn.execute(_COUNT)).scalar_one() == 0
    finally:
        await single.dispose()


# --- the app role cannot switch row-level security off (issue 9, item 13) ---------------


@dataclass(frozen=True)
class Theirs:
    """Rows of the other workspace in every kind of table, and what names them."""

    actor: Actor
    account: WhatsAppAccount
    invitation_token_hash: str
    event_id: uuid.UUID


@pytest.fixture
async def theirs(db: Database, owner_db: Database, other_admin: Actor) -> Theirs:
    """The other workspace: a number, a conversation, a due outbound message, a live
    session, a pending invitation, an audit event; and a stored webhook event."""
    digest = "f" * 64
    async with db.session(other_admin.org_id) as session:
        conversation = await create_conversation(session)
        account = await session.get(WhatsAppAccount, conversation.account_id)
        assert account is not None
        account.access_token_enc = "v1.sealed"  # due for a health check
        await create_message(
            session,
            conversation,
            direction=MessageDirection.OUTBOUND,
            status=MessageStatus.QUEUED,
            wa_message_id=None,
            next_attempt_at=utcnow() - timedelta(seconds=1),
        )
        session.add(
            AuthSession(
                user_id=other_admin.user.id,
                membership_id=other_admin.membership.id,
                refresh_token_hash="e" * 64,
                expires_at=utcnow() + timedelta(days=1),
            )
        )
        session.add(
            Invitation(
                email="invitee@globex.example",
                name="Invitee",
                role=Role.AGENT,
                token_hash=digest,
                expires_at=utcnow() + timedelta(days=1),
            )
        )
        await record(session, Action.MEMBER_INVITED, details={})
    event = WebhookEvent(
        body=b'{"secret": "their customer wrote this"}',
        body_sha256="0" * 64,
        status=WebhookEventStatus.FAILED,
        next_attempt_at=utcnow() - timedelta(seconds=1),
    )
    async with owner_db.session(all_workspaces="test: a stored webhook event") as session:
        session.add(event)
    return Theirs(other_admin, account, digest, event.id)


_TENANT_TABLES = (
    "memberships",
    "sessions",
    "audit_events",
    "invitations",
    "whatsapp_accounts",
    "smtp_settings",
    "contacts",
    "conversations",
    "messages",
    "template_status_events",
)


async def sql(
    session: AsyncSession, statement: str, params: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """Raw SQL in the session's transaction: around the ORM's filter, on purpose."""
    connection = await session.connection()
    return await connection.execute(text(statement), params or {})


async def _visible_elsewhere(session: AsyncSession, mine: uuid.UUID) -> dict[str, int]:
    """Rows the transaction sees that are not of workspace `mine` (users: not its members)."""
    seen: dict[str, int] = {}
    for table in _TENANT_TABLES:
        seen[table] = (
            await sql(
                session,
                f"SELECT count(*) FROM {table} WHERE org_id <> :mine",  # noqa: S608
                {"mine": mine},
            )
        ).scalar_one()
    seen["organizations"] = (
        await sql(session, "SELECT count(*) FROM organizations WHERE id <> :mine", {"mine": mine})
    ).scalar_one()
    seen["users"] = (
        await sql(
            session,
            "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM memberships m "
            "WHERE m.user_id = u.id AND m.org_id = :mine)",
            {"mine": mine},
        )
    ).scalar_one()
    seen["webhook_events"] = (
        await sql(session, "SELECT count(*) FROM webhook_events")
    ).scalar_one()
    return {table: count for table, count in seen.items() if count}


async def test_an_injected_all_workspaces_switch_shows_no_other_workspace(
    db: Database, admin: Actor, theirs: Theirs
) -> None:
    """Given another workspace with rows in every table,
    when a statement on a request connection sets app.all_workspaces, for the
    transaction or for the connection (as an injected statement would),
    then no table shows a row of the other workspace, users and webhook events included."""
    async with db.session(admin.org_id) as session:
        assert await _visible_elsewhere(session, admin.org_id) == {}
        await sql(session, "SELECT set_config('app.all_workspaces', 'on', true)")
        assert await _visible_elsewhere(session, admin.org_id) == {}
        await sql(session, "SELECT set_config('app.all_workspaces', 'on', false)")
    async with db.session(admin.org_id) as session:
        assert await _visible_elsewhere(session, admin.org_id) == {}


@pytest.mark.parametrize(
    "statement",
    [
        "SET ROLE {owner}",
        "SET SESSION AUTHORIZATION {owner}",
        "SET LOCAL ROLE {owner}",
        "SET ROLE postgres",
        "ALTER TABLE memberships DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE memberships NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON memberships",
        "CREATE POLICY everything ON memberships USING (true)",
        "ALTER FUNCTION weflux_user_sessions(uuid) SECURITY INVOKER",
    ],
)
async def test_the_app_role_can_neither_become_the_owner_nor_change_the_policies(
    db: Database, owner_db: Database, admin: Actor, theirs: Theirs, statement: str
) -> None:
    """Given a request connection of the app role,
    when it tries to switch role or authorization, or to alter tables, policies or functions,
    then PostgreSQL refuses, and RESET ROLE / RESET SESSION AUTHORIZATION change nothing."""
    owner = owner_db.url.username
    with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
        async with db.session(admin.org_id) as session:
            await sql(session, statement.format(owner=owner))
    async with db.session(admin.org_id) as session:
        for reset in ("RESET ROLE", "SET ROLE NONE", "RESET SESSION AUTHORIZATION"):
            await sql(session, reset)
        assert (await sql(session, "SELECT current_user")).scalar_one() == db.url.username
        assert await _visible_elsewhere(session, admin.org_id) == {}


async def test_users_are_seen_and_changed_only_as_members_of_the_workspace(
    db: Database, admin: Actor, theirs: Theirs
) -> None:
    """Given users of two workspaces,
    when a request reads or updates `users` directly,
    then it sees and changes only members of its workspace; with no workspace, nobody."""
    async with db.session(admin.org_id) as session:
        emails = (await sql(session, "SELECT email FROM users")).scalars().all()
        changed = await sql(
            session,
            "UPDATE users SET password_hash = 'x' WHERE id = :id",
            {"id": theirs.actor.user.id},
        )
    assert emails == [admin.user.email]
    assert changed.rowcount == 0
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one() == 0


async def test_a_webhook_event_is_seen_only_by_the_transaction_that_names_it(
    db: Database, admin: Actor, theirs: Theirs
) -> None:
    """Given a stored webhook event (its body may concern any workspace),
    when the app role reads webhook_events without naming the event's id,
    then it sees nothing; naming it (the id is the capability) shows that one only."""
    async with db.session(admin.org_id) as session:
        assert (await sql(session, "SELECT count(*) FROM webhook_events")).scalar_one() == 0
    async with db.session(webhook_event=theirs.event_id) as session:
        ids = (await sql(session, "SELECT id FROM webhook_events")).scalars().all()
    assert ids == [theirs.event_id]
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(admin.org_id) as session:
            await sql(
                session,
                "INSERT INTO webhook_events (id, received_at, body, body_sha256, status, "
                "attempts) VALUES (:id, now(), 'x', 'x', 'PENDING', 0)",
                {"id": uuid.uuid4()},
            )


# What each cross-workspace function may answer, and nothing more.
CROSSING_FUNCTIONS = {
    "weflux_account_by_email": "TABLE(user_id uuid, password_hash text)",
    "weflux_delete_orphan_users": "integer",
    "weflux_delete_workspace_alerts": "integer",
    "weflux_due_data_requests": "TABLE(org_id uuid, request_id uuid)",
    "weflux_due_retention": "SETOF uuid",
    "weflux_erase_webhook_bodies": "integer",
    "weflux_expire_webhook_bodies": "integer",
    "weflux_expire_platform_security_events": "integer",
    "weflux_expire_security_alerts": "integer",
    "weflux_expire_orphan_users": "integer",
    "weflux_expired_exports": "TABLE(org_id uuid, request_id uuid)",
    "weflux_stale_object_intents": "TABLE(org_id uuid, intent_id uuid)",
    "weflux_webhook_payload_retention_days": "integer",
    "weflux_due_health_checks": "TABLE(org_id uuid, account_id uuid)",
    "weflux_due_media_downloads": "TABLE(org_id uuid, media_id uuid, suspect boolean)",
    "weflux_due_outbound_messages": "TABLE(org_id uuid, message_id uuid, suspect boolean)",
    "weflux_due_webhook_events": "SETOF uuid",
    "weflux_invitation_by_token": "TABLE(org_id uuid, invitation_id uuid)",
    # Digests of the live webhook keys, never the keys (migration 0035).
    "weflux_live_webhook_key_digests": "bytea",
    # Within the transaction's own workspace: the search's trigram indexes (migration 0025).
    "weflux_matching_contacts": "SETOF uuid",
    "weflux_user_sessions": "TABLE(org_id uuid, session_id uuid)",
    "weflux_user_workspaces": "TABLE(org_id uuid, name text)",
    "weflux_webhook_channel": "TABLE(org_id uuid, account_id uuid)",
    "weflux_webhook_routes": "TABLE(org_id uuid, account_id uuid, phone_number_id text, "
    "business_account_id text, display_phone_number text)",
}


# The previous release's claims, kept beside their successors for a rolling upgrade
# (migration 0038): the same question, with suspects in the answer.
EARLIER_CLAIMS = {
    ("weflux_due_media_downloads", "TABLE(org_id uuid, media_id uuid)"),
    ("weflux_due_outbound_messages", "TABLE(org_id uuid, message_id uuid)"),
}


# A function's own planner settings besides its search_path.
PLANNER_SETTINGS = {"weflux_matching_contacts": ["enable_bitmapscan=off"]}


async def test_the_cross_workspace_functions_are_these_and_locked_down(owner_db: Database) -> None:
    """Given the migrated schema,
    when its SECURITY DEFINER functions are listed,
    then they are exactly the known ones, each answering only its columns, with a fixed
    search_path, and not executable by PUBLIC."""
    async with owner_db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT p.proname, pg_get_function_result(p.oid), p.proconfig, "
                    "has_function_privilege('public', p.oid, 'EXECUTE') "
                    "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public' AND p.prosecdef"
                )
            )
        ).all()
    assert {(row[0], row[1]) for row in rows} == set(CROSSING_FUNCTIONS.items()) | EARLIER_CLAIMS
    for name, _, config, public in rows:
        assert config == ["search_path=public, pg_temp", *PLANNER_SETTINGS.get(name, [])], name
        assert public is False, name


async def test_calling_the_functions_directly_reveals_only_their_answer(
    db: Database, admin: Actor, theirs: Theirs
) -> None:
    """Given a request connection of another workspace (as an injected statement would),
    when it calls every cross-workspace function about the other workspace,
    then each answers only its ids (or, for an email, the account's hash), and the
    transaction still sees no row of the other workspace."""
    other, account = theirs.actor, theirs.account
    now = utcnow()
    calls: dict[str, dict[str, Any]] = {
        "SELECT * FROM weflux_webhook_channel(:key)": {"key": account.webhook_key},
        "SELECT * FROM weflux_webhook_routes(ARRAY[:phone], ARRAY[]::text[], NULL)": {
            "phone": account.phone_number_id
        },
        "SELECT * FROM weflux_account_by_email(:email)": {"email": other.user.email},
        "SELECT * FROM weflux_user_workspaces(:user)": {"user": other.user.id},
        "SELECT * FROM weflux_user_sessions(:user)": {"user": other.user.id},
        "SELECT * FROM weflux_invitation_by_token(:hash)": {"hash": theirs.invitation_token_hash},
        "SELECT * FROM weflux_due_webhook_events(:now, :now, 10)": {"now": now},
        "SELECT * FROM weflux_due_outbound_messages(:now, 10, false)": {"now": now},
        "SELECT * FROM weflux_due_health_checks(:now, 10)": {"now": now},
    }
    answers = {}
    async with db.session(admin.org_id) as session:
        # A temporary table cannot stand in for a real one: the functions' search_path
        # puts pg_temp last.
        await sql(session, "CREATE TEMPORARY TABLE whatsapp_accounts (x int)")
        for statement, params in calls.items():
            result = await sql(session, statement, params)
            answers[statement.split("(")[0].removeprefix("SELECT * FROM ")] = (
                list(result.keys()),
                [tuple(row) for row in result.all()],
            )
        await sql(session, "DROP TABLE pg_temp.whatsapp_accounts")
        assert await _visible_elsewhere(session, admin.org_id) == {}
    org = other.org_id
    assert answers["weflux_webhook_channel"] == (["org_id", "account_id"], [(org, account.id)])
    columns, rows = answers["weflux_webhook_routes"]
    assert columns == [
        "org_id",
        "account_id",
        "phone_number_id",
        "business_account_id",
        "display_phone_number",
    ]
    assert rows == [
        (
            org,
            account.id,
            account.phone_number_id,
            account.business_account_id,
            account.display_phone_number,
        )
    ]
    assert answers["weflux_account_by_email"][1] == [(other.user.id, other.user.password_hash)]
    assert answers["weflux_user_workspaces"][1] == [(org, "Globex")]
    assert [r[0] for r in answers["weflux_user_sessions"][1]] == [org]
    assert [r[0] for r in answers["weflux_invitation_by_token"][1]] == [org]
    assert answers["weflux_due_webhook_events"][1] == [(theirs.event_id,)]
    assert [r[0] for r in answers["weflux_due_outbound_messages"][1]] == [org]
    assert answers["weflux_due_health_checks"][1] == [(org, account.id)]


async def test_the_live_keys_crossing_answers_digests_never_keys(
    db: Database, admin: Actor, theirs: Theirs
) -> None:
    """Given another workspace's live number,
    when the app's role of this workspace asks for the live webhook keys' digests,
    then it gets 8 bytes of SHA-256 of that key, never the key, and still reads no key
    of the other workspace."""
    key = theirs.account.webhook_key
    async with db.session(admin.org_id) as session:
        await sql(session, "CREATE TEMPORARY TABLE whatsapp_accounts (x int)")
        blob = (await sql(session, "SELECT weflux_live_webhook_key_digests()")).scalar_one()
        await sql(session, "DROP TABLE pg_temp.whatsapp_accounts")
        keys = (await sql(session, "SELECT webhook_key FROM whatsapp_accounts")).scalars()
        assert key not in keys.all()
        assert await _visible_elsewhere(session, admin.org_id) == {}
    assert bytes(blob) == hashlib.sha256(key.encode()).digest()[:8]
    assert key.encode() not in bytes(blob)


async def test_maintenance_refuses_a_role_held_by_row_level_security(
    database_urls: DatabaseUrls, owner_db: Database
) -> None:
    """Given the app's URL where the schema owner's is needed,
    when a maintenance handle is opened on it (say, `weflux keys rotate`),
    then it is refused with the variable to set, instead of silently seeing nothing;
    the owner's URL is accepted, its role being the tables' owner."""
    with pytest.raises(ConfigError, match="WEFLUX_DATABASE_MIGRATION_URL"):
        await maintenance_database(database_urls.app)
    role = await owner_db.role_check()
    assert role is not None
    assert (role.superuser, role.owns_tables, role.subject_to_rls) == (False, True, False)
    handle = await maintenance_database(database_urls.owner)
    await handle.dispose()


async def test_the_app_role_appends_to_the_erasure_ledger_and_reads_none_of_it(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given the app's role in a workspace,
    when it appends a ledger entry and then reads, updates or deletes the ledger,
    then the entry is written (the owner sees it) and the app sees and changes nothing."""
    async with db.session(admin.org_id) as session:
        await sql(
            session,
            "INSERT INTO erasure_ledger (id, recorded_at, kind, org_id) "
            "VALUES (:id, now(), 'WORKSPACE_DELETION', :org)",
            {"id": uuid.uuid4(), "org": admin.org_id},
        )
    async with db.session(admin.org_id) as session:
        assert (await sql(session, "SELECT count(*) FROM erasure_ledger")).scalar_one() == 0
        assert (await sql(session, "UPDATE erasure_ledger SET key_id = 'x'")).rowcount == 0
        assert (await sql(session, "DELETE FROM erasure_ledger")).rowcount == 0
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT key_id FROM erasure_ledger"))).all()
    assert [row[0] for row in rows] == [None]
