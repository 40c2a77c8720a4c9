"""The app's only ways across workspaces: each answers one question, with ids.

Webhook routing, the worker's sweeps, login, invitation acceptance and password changes
must find rows before they know (or while they span) the workspace. Each such question
is one function here. On PostgreSQL it calls a SECURITY DEFINER function of the schema
owner (migration 0007_tenancy) that answers only ids (and, for an email, the account's
password hash): the app's role itself sees one workspace per transaction, with no switch
to see more. On SQLite the same question is a Core statement on the session's
connection, out of the ORM scoping layer's way. Either way the work then continues in a
session narrowed to the workspace (`use_workspace`, `db.session(org_id)`), under the
scoping layer and row-level security as everywhere else. docs/security/tenancy.md says why each
exists and what an injected call of one could learn.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Executable, exists, func, or_, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.models import (
    OPEN_STATUSES,
    AlertStatus,
    AuthSession,
    Contact,
    DataRequest,
    Invitation,
    MediaFile,
    Membership,
    Message,
    MessageDirection,
    MessageStatus,
    Organization,
    PlatformSecurityEvent,
    SecurityAlert,
    StoredObjectIntent,
    User,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    utcnow,
)

_MAX_BATCH = 500  # as the PostgreSQL functions cap it


@dataclass(frozen=True)
class Owned:
    """A row and the workspace it belongs to."""

    org_id: uuid.UUID
    id: uuid.UUID


@dataclass(frozen=True)
class Route:
    """A connected number, as webhook routing needs it."""

    org_id: uuid.UUID
    account_id: uuid.UUID
    phone_number_id: str
    business_account_id: str
    display_phone_number: str


@dataclass(frozen=True)
class Account:
    """A login account, as a password check needs it."""

    user_id: uuid.UUID
    password_hash: str = field(repr=False)


@dataclass(frozen=True)
class Workspace:
    """A workspace a user belongs to."""

    org_id: uuid.UUID
    name: str


def by_workspace(rows: Iterable[Owned]) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Ids grouped by workspace, each group in the order given."""
    groups: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for row in rows:
        groups[row.org_id].append(row.id)
    return dict(groups)


async def _answer(
    session: AsyncSession,
    function: str,
    params: dict[str, Any],
    sqlite: Callable[[], Executable],
) -> Sequence[Any]:
    """Rows of `function(params…)` on PostgreSQL, of the `sqlite` statement elsewhere."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        # Names are this module's constants; values travel as bound parameters.
        arguments = ", ".join(f":{name}" for name in params)
        call = text(f"SELECT * FROM {function}({arguments})")  # noqa: S608
        result = await connection.execute(call, params)
    else:
        result = await connection.execute(sqlite())
    return result.all()


def _batch(size: int) -> int:
    return max(0, min(size, _MAX_BATCH))


def _live(account: Any) -> Any:
    return col(account.disconnected_at).is_(None)


# -- webhooks -----------------------------------------------------------------------------


async def webhook_channel(session: AsyncSession, webhook_key: str) -> Owned | None:
    """The live number a keyed webhook URL names."""
    rows = await _answer(
        session,
        "weflux_webhook_channel",
        {"webhook_key": webhook_key},
        lambda: select(WhatsAppAccount.org_id, WhatsAppAccount.id).where(
            WhatsAppAccount.webhook_key == webhook_key, _live(WhatsAppAccount)
        ),
    )
    return Owned(rows[0][0], rows[0][1]) if rows else None


WEBHOOK_KEY_DIGEST_BYTES = 8


def webhook_key_digest(webhook_key: str) -> bytes:
    """A webhook key's digest as `live_webhook_key_digests` answers it: the first
    `WEBHOOK_KEY_DIGEST_BYTES` of SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(webhook_key.encode()).digest()[:WEBHOOK_KEY_DIGEST_BYTES]


async def live_webhook_key_digests(session: AsyncSession) -> bytes:
    """The digests of every live number's webhook key (`webhook_key_digest`), concatenated,
    in no order: never the keys (weflux.services.live_keys)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        call = text("SELECT weflux_live_webhook_key_digests()")
        return bytes((await connection.execute(call)).scalar_one())
    keys = await connection.execute(
        select(WhatsAppAccount.webhook_key).where(_live(WhatsAppAccount))
    )
    return b"".join(webhook_key_digest(key) for key in keys.scalars())


async def webhook_routes(
    session: AsyncSession,
    phone_number_ids: Collection[str],
    business_account_ids: Collection[str],
    keyed_account_id: uuid.UUID | None,
) -> list[Route]:
    """Live numbers with these phone number or business account ids; for an event that
    came to a keyed URL, only those of that URL's workspace (none if its number is gone)."""
    phones, wabas = sorted(phone_number_ids), sorted(business_account_ids)

    def sqlite() -> Executable:
        statement = sa.select(
            col(WhatsAppAccount.org_id),
            col(WhatsAppAccount.id),
            col(WhatsAppAccount.phone_number_id),
            col(WhatsAppAccount.business_account_id),
            col(WhatsAppAccount.display_phone_number),
        ).where(
            _live(WhatsAppAccount),
            or_(
                col(WhatsAppAccount.phone_number_id).in_(phones),
                col(WhatsAppAccount.business_account_id).in_(wabas),
            ),
        )
        if keyed_account_id is not None:
            keyed = aliased(WhatsAppAccount)
            owner = select(keyed.org_id).where(keyed.id == keyed_account_id).scalar_subquery()
            statement = statement.where(col(WhatsAppAccount.org_id) == owner)
        return statement

    rows = await _answer(
        session,
        "weflux_webhook_routes",
        {
            "phone_number_ids": phones,
            "business_account_ids": wabas,
            "keyed_account_id": keyed_account_id,
        },
        sqlite,
    )
    return [Route(row[0], row[1], row[2], row[3], row[4]) for row in rows]


async def due_webhook_events(
    session: AsyncSession, *, now: datetime, settled_before: datetime, batch: int
) -> list[uuid.UUID]:
    """Stored events to process again: never processed and older than `settled_before`,
    or failed and due. Ids only: a session then names each (`db.session(webhook_event=)`)."""
    rows = await _answer(
        session,
        "weflux_due_webhook_events",
        {"at_time": now, "settled_before": settled_before, "batch": batch},
        lambda: (
            select(WebhookEvent.id)
            .where(
                WebhookEvent.status != WebhookEventStatus.PROCESSED,
                or_(
                    (col(WebhookEvent.status) == WebhookEventStatus.PENDING)
                    & (col(WebhookEvent.received_at) < settled_before),
                    (col(WebhookEvent.status) == WebhookEventStatus.FAILED)
                    & (col(WebhookEvent.next_attempt_at) <= now),
                ),
            )
            .order_by(col(WebhookEvent.received_at))
            .limit(_batch(batch))
        ),
    )
    return [row[0] for row in rows]


# -- the worker ---------------------------------------------------------------------------


# A message in flight: being sent under a lease, its wamid not known. Once the lease ran
# out (it is due) it is a suspect (weflux.worker.suspects). Literal, so PostgreSQL and
# SQLite match the partial index `ix_messages_in_flight`.
MESSAGE_IN_FLIGHT = ("messages.status = 'SENDING'", "messages.wa_message_id IS NULL")
# A download in flight (`ix_media_files_in_flight`); due, a suspect.
MEDIA_IN_FLIGHT = "media_files.status = 'DOWNLOADING'"


def due_outbound(now: datetime, *, suspects: bool = False) -> Any:
    """(org_id, id) of outbound messages due for a send attempt, oldest due first: without
    `suspects` those that are not suspects (QUEUED, or SENDING with a wamid a webhook
    filled in, to settle), with it the suspects alone (SENDING without one, lease run out).

    Only the oldest pending (QUEUED or SENDING) outbound message of a conversation is
    due, whatever it is, so a conversation's messages go out one at a time and in order:
    one behind a suspect waits for it. Locked with SKIP LOCKED on PostgreSQL, so workers
    claim disjoint rows.
    """
    earlier = aliased(Message)
    waits_behind_earlier = exists().where(
        col(earlier.org_id) == col(Message.org_id),
        col(earlier.conversation_id) == col(Message.conversation_id),
        col(earlier.id) < col(Message.id),
        col(earlier.direction) == MessageDirection.OUTBOUND,
        col(earlier.status).in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
    )
    sending, no_wamid = (text(term) for term in MESSAGE_IN_FLIGHT)
    # Literal, so PostgreSQL matches the partial index `ix_messages_outbox` (or, for the
    # suspects, `ix_messages_in_flight`).
    which = (
        (sending, no_wamid)
        if suspects
        else (
            text("messages.status IN ('QUEUED', 'SENDING')"),
            ~sa.and_(sending, no_wamid),
        )
    )
    return (
        select(Message.org_id, Message.id)
        .where(
            *which,
            col(Message.next_attempt_at) <= now,
            Message.direction == MessageDirection.OUTBOUND,
            ~waits_behind_earlier,
        )
        .order_by(col(Message.next_attempt_at), col(Message.id))
        .with_for_update(skip_locked=True, of=Message)
    )


@dataclass(frozen=True)
class DueWork:
    """The rows a claim reads, row-locked, and whether a suspect is due (a batch's read,
    which leaves them out, tells the worker to claim them after it, each alone)."""

    rows: list[Owned]
    suspect_due: bool


async def _due_work(
    session: AsyncSession,
    function: str,
    *,
    now: datetime,
    batch: int,
    suspects: bool,
    statement: Callable[[bool], Any],
) -> DueWork:
    """`function(now, batch, suspects)` on PostgreSQL: the rows of the mode asked for,
    row-locked, each marked as a suspect or not, and in a batch's read the first suspect
    due (unlocked: a hint). Elsewhere `statement(suspects)` (SQLAlchemy's SELECT of
    (org_id, id)), then for a batch `statement(True)` for the hint."""
    params = {"at_time": now, "batch": batch, "suspects": suspects}
    rows = await _answer(
        session, function, params, lambda: statement(suspects).limit(_batch(batch))
    )
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        taken = [Owned(row[0], row[1]) for row in rows if row[2] == suspects]
        return DueWork(taken, any(row[2] for row in rows))
    taken = [Owned(row[0], row[1]) for row in rows]
    if suspects:
        return DueWork(taken, bool(taken))
    hint = (await connection.execute(statement(True).limit(1))).first()
    return DueWork(taken, hint is not None)


async def due_outbound_messages(
    session: AsyncSession, *, now: datetime, batch: int, suspects: bool = False
) -> DueWork:
    """Outbound messages due across workspaces (`due_outbound`: the suspects, or all
    others), row-locked for this transaction; and whether a suspect is due."""
    return await _due_work(
        session,
        "weflux_due_outbound_messages",
        now=now,
        batch=batch,
        suspects=suspects,
        statement=lambda suspect: due_outbound(now, suspects=suspect),
    )


def _due_media(now: datetime, *, suspects: bool) -> Any:
    # Literal, so PostgreSQL matches the partial index `ix_media_files_due` (or, for the
    # suspects, `ix_media_files_in_flight`).
    which = (
        (text(MEDIA_IN_FLIGHT),)
        if suspects
        else (
            text("media_files.status IN ('PENDING', 'DOWNLOADING')"),
            text("media_files.status = 'PENDING'"),
        )
    )
    return (
        select(MediaFile.org_id, MediaFile.id)
        .where(*which, col(MediaFile.next_attempt_at) <= now)
        .order_by(col(MediaFile.next_attempt_at), col(MediaFile.id))
    )


async def due_media_downloads(
    session: AsyncSession, *, now: datetime, batch: int, suspects: bool = False
) -> DueWork:
    """Inbound media files due for a download attempt across workspaces: without
    `suspects` PENDING ones, with it the suspects alone (DOWNLOADING, lease run out);
    row-locked (SKIP LOCKED on PostgreSQL, so workers claim disjoint files); and whether
    a suspect is due."""
    return await _due_work(
        session,
        "weflux_due_media_downloads",
        now=now,
        batch=batch,
        suspects=suspects,
        statement=lambda suspect: _due_media(now, suspects=suspect),
    )


async def due_health_checks(
    session: AsyncSession, *, due_before: datetime, batch: int
) -> list[Owned]:
    """Connected numbers not checked since `due_before`, row-locked for this transaction."""
    rows = await _answer(
        session,
        "weflux_due_health_checks",
        {"due_before": due_before, "batch": batch},
        lambda: (
            select(WhatsAppAccount.org_id, WhatsAppAccount.id)
            .where(
                _live(WhatsAppAccount),
                col(WhatsAppAccount.access_token_enc).is_not(None),
                or_(
                    col(WhatsAppAccount.health_checked_at).is_(None),
                    col(WhatsAppAccount.health_checked_at) < due_before,
                ),
            )
            .order_by(col(WhatsAppAccount.health_checked_at).asc().nulls_first())
            .limit(_batch(batch))
            .with_for_update(skip_locked=True)
        ),
    )
    return [Owned(row[0], row[1]) for row in rows]


# -- people -------------------------------------------------------------------------------


async def account_by_email(session: AsyncSession, email: str) -> Account | None:
    """The login account of an email (any case), for a password check."""
    rows = await _answer(
        session,
        "weflux_account_by_email",
        {"email": email},
        lambda: select(User.id, User.password_hash).where(
            func.lower(User.email) == func.lower(email)
        ),
    )
    return Account(rows[0][0], rows[0][1]) if rows else None


async def user_workspaces(session: AsyncSession, user_id: uuid.UUID) -> list[Workspace]:
    """The workspaces a user belongs to, in the order they joined."""
    rows = await _answer(
        session,
        "weflux_user_workspaces",
        {"user_id": user_id},
        lambda: (
            select(Organization.id, Organization.name)
            .join(Membership, col(Membership.org_id) == col(Organization.id))
            .where(Membership.user_id == user_id)
            .order_by(col(Membership.created_at), col(Membership.id))
        ),
    )
    return [Workspace(row[0], row[1]) for row in rows]


async def invitation_by_token(session: AsyncSession, token_hash: str) -> Owned | None:
    """The invitation whose token hashes to `token_hash`."""
    rows = await _answer(
        session,
        "weflux_invitation_by_token",
        {"token_hash": token_hash},
        lambda: select(Invitation.org_id, Invitation.id).where(Invitation.token_hash == token_hash),
    )
    return Owned(rows[0][0], rows[0][1]) if rows else None


async def user_sessions(session: AsyncSession, user_id: uuid.UUID) -> list[Owned]:
    """A user's sessions not revoked, in every workspace."""
    rows = await _answer(
        session,
        "weflux_user_sessions",
        {"user_id": user_id},
        lambda: select(AuthSession.org_id, AuthSession.id).where(
            AuthSession.user_id == user_id, col(AuthSession.revoked_at).is_(None)
        ),
    )
    return [Owned(row[0], row[1]) for row in rows]


# -- data lifecycle -----------------------------------------------------------------------


async def due_data_requests(session: AsyncSession, *, now: datetime, batch: int) -> list[Owned]:
    """Open data requests (erasures, deletions, exports) whose time has come."""
    rows = await _answer(
        session,
        "weflux_due_data_requests",
        {"at_time": now, "batch": batch},
        lambda: (
            select(DataRequest.org_id, DataRequest.id)
            .where(col(DataRequest.status).in_(OPEN_STATUSES), col(DataRequest.run_after) <= now)
            .order_by(col(DataRequest.run_after), col(DataRequest.id))
            .limit(_batch(batch))
        ),
    )
    return [Owned(row[0], row[1]) for row in rows]


async def expired_exports(session: AsyncSession, *, now: datetime, batch: int) -> list[Owned]:
    """Export requests whose file has passed its `expires_at`."""
    rows = await _answer(
        session,
        "weflux_expired_exports",
        {"at_time": now, "batch": batch},
        lambda: (
            select(DataRequest.org_id, DataRequest.id)
            .where(col(DataRequest.file_name).is_not(None), col(DataRequest.expires_at) <= now)
            .order_by(col(DataRequest.expires_at), col(DataRequest.id))
            .limit(_batch(batch))
        ),
    )
    return [Owned(row[0], row[1]) for row in rows]


async def stale_object_intents(
    session: AsyncSession, *, created_before: datetime, batch: int
) -> list[Owned]:
    """Writes to the media store recorded before `created_before` whose owning row never
    took them (`weflux.media.intents`), the oldest first."""
    rows = await _answer(
        session,
        "weflux_stale_object_intents",
        {"created_before": created_before, "batch": batch},
        lambda: (
            select(StoredObjectIntent.org_id, StoredObjectIntent.id)
            .where(col(StoredObjectIntent.created_at) < created_before)
            .order_by(col(StoredObjectIntent.created_at), col(StoredObjectIntent.id))
            .limit(_batch(batch))
        ),
    )
    return [Owned(row[0], row[1]) for row in rows]


def body_needle(identifier: str) -> str:
    """How an id appears in a raw webhook body: a JSON string."""
    return f'"{identifier}"'


async def erase_webhook_bodies(session: AsyncSession, needles: Sequence[str], *, batch: int) -> int:
    """Delete up to `batch` raw webhook bodies containing one of `needles`; how many went.

    Deletes, never reads: the erased contact's ids (`body_needle`) are the question.
    """
    wanted = [needle for needle in needles if needle]

    def sqlite() -> Executable:
        found = or_(*(func.instr(col(WebhookEvent.body), needle.encode()) > 0 for needle in wanted))
        doomed = select(WebhookEvent.id).where(found).limit(_batch(batch)).scalar_subquery()
        return sa.delete(WebhookEvent).where(col(WebhookEvent.id).in_(doomed))

    if not wanted:
        return 0
    return await _count(
        session, "weflux_erase_webhook_bodies", {"needles": wanted, "batch": batch}, sqlite
    )


async def expire_webhook_bodies(
    session: AsyncSession, *, expired_before: datetime, retrying_before: datetime, batch: int
) -> int:
    """Delete up to `batch` raw bodies: processed before `expired_before`, parked and
    received before it, or still to process (pending, retried) and received before
    `retrying_before`; how many went."""
    status, received = col(WebhookEvent.status), col(WebhookEvent.received_at)
    return await _delete_batch(
        session,
        "weflux_expire_webhook_bodies",
        {"expired_before": expired_before, "retrying_before": retrying_before, "batch": batch},
        WebhookEvent,
        or_(
            (status == WebhookEventStatus.PROCESSED)
            & (col(WebhookEvent.processed_at) < expired_before),
            (status == WebhookEventStatus.PARKED) & (received < expired_before),
            status.in_([WebhookEventStatus.PENDING, WebhookEventStatus.FAILED])
            & (received < retrying_before),
        ),
    )


async def expire_platform_security_events(
    session: AsyncSession, *, created_before: datetime, batch: int
) -> int:
    """Delete up to `batch` platform security events created before `created_before`."""
    return await _delete_batch(
        session,
        "weflux_expire_platform_security_events",
        {"created_before": created_before, "batch": batch},
        PlatformSecurityEvent,
        col(PlatformSecurityEvent.created_at) < created_before,
    )


async def expire_security_alerts(
    session: AsyncSession, *, created_before: datetime, batch: int
) -> int:
    """Delete up to `batch` sent or suppressed alerts created before `created_before`
    (pending ones stay: the worker still owes them)."""
    return await _delete_batch(
        session,
        "weflux_expire_security_alerts",
        {"created_before": created_before, "batch": batch},
        SecurityAlert,
        col(SecurityAlert.created_at) < created_before,
        col(SecurityAlert.status) != AlertStatus.PENDING,
    )


async def _delete_batch(
    session: AsyncSession,
    function: str,
    params: dict[str, Any],
    model: type[WebhookEvent] | type[PlatformSecurityEvent] | type[SecurityAlert],
    *criteria: ColumnElement[bool],
) -> int:
    """Delete up to `params["batch"]` rows of `model` meeting `criteria`: the PostgreSQL
    function `function` does it for the app's role; on SQLite, one DELETE of them."""

    def sqlite() -> Executable:
        doomed = select(model.id).where(*criteria).limit(_batch(params["batch"])).scalar_subquery()
        return sa.delete(model).where(col(model.id).in_(doomed))

    return await _count(session, function, params, sqlite)


async def webhook_payload_retention_days(session: AsyncSession) -> int:
    """The shortest raw-body retention of any workspace (a body may concern several)."""
    rows = await _answer(
        session,
        "weflux_webhook_payload_retention_days",
        {},
        lambda: sa.select(
            func.coalesce(func.min(col(Organization.webhook_payload_retention_days)), 30)
        ),
    )
    return int(rows[0][0])


async def due_retention(
    session: AsyncSession, *, ran_before: datetime, batch: int
) -> list[uuid.UUID]:
    """Workspaces whose retention job last ran before `ran_before` (or never)."""
    rows = await _answer(
        session,
        "weflux_due_retention",
        {"ran_before": ran_before, "batch": batch},
        lambda: (
            select(Organization.id)
            .where(
                or_(
                    col(Organization.retention_ran_at).is_(None),
                    col(Organization.retention_ran_at) < ran_before,
                )
            )
            .order_by(col(Organization.retention_ran_at).asc().nulls_first(), col(Organization.id))
            .limit(_batch(batch))
        ),
    )
    return [row[0] for row in rows]


def orphan(users: Any, *, at: Any) -> ColumnElement[bool]:
    """An account no workspace holds at `at`: no membership, and no invitation to its email
    neither accepted nor expired (accepting it joins with the account). `users`: the
    `users` table or model."""
    memberships: sa.Table = Membership.__table__  # type: ignore[attr-defined]
    invitations: sa.Table = Invitation.__table__  # type: ignore[attr-defined]
    member = exists().where(memberships.c.user_id == users.id)
    invited = exists().where(
        func.lower(invitations.c.email) == func.lower(users.email),
        invitations.c.accepted_at.is_(None),
        invitations.c.expires_at > at,
    )
    return ~member & ~invited


async def delete_orphan_users(session: AsyncSession, user_ids: Collection[uuid.UUID]) -> int:
    """Delete those of `user_ids` no workspace holds any more (`orphan`); how many went."""
    ids = sorted(user_ids)
    users: sa.Table = User.__table__  # type: ignore[attr-defined]

    def sqlite() -> Executable:
        return sa.delete(users).where(users.c.id.in_(ids), orphan(users.c, at=utcnow()))

    if not ids:
        return 0
    return await _count(session, "weflux_delete_orphan_users", {"user_ids": ids}, sqlite)


async def expire_orphan_users(
    session: AsyncSession, *, now: datetime, created_before: datetime, batch: int
) -> int:
    """Delete up to `batch` accounts created before `created_before` that no workspace
    holds (`orphan` at `now`): those a removal or a deletion left behind; how many went."""
    users: sa.Table = User.__table__  # type: ignore[attr-defined]

    def sqlite() -> Executable:
        doomed = (
            sa.select(users.c.id)
            .where(users.c.created_at < created_before, orphan(users.c, at=now))
            .order_by(users.c.created_at, users.c.id)
            .limit(_batch(batch))
            .scalar_subquery()
        )
        return sa.delete(users).where(users.c.id.in_(doomed))

    return await _count(
        session,
        "weflux_expire_orphan_users",
        {"at_time": now, "created_before": created_before, "batch": batch},
        sqlite,
    )


async def delete_workspace_alerts(session: AsyncSession, org_id: uuid.UUID) -> int:
    """Delete the security alerts of a workspace being deleted; how many went."""

    def sqlite() -> Executable:
        return sa.delete(SecurityAlert).where(col(SecurityAlert.org_id) == org_id)

    return await _count(session, "weflux_delete_workspace_alerts", {"workspace": org_id}, sqlite)


async def _count(
    session: AsyncSession,
    function: str,
    params: dict[str, Any],
    sqlite: Callable[[], Executable],
) -> int:
    """The count a deleting function answers; on SQLite, the rows its statement deleted."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        rows = await _answer(session, function, params, sqlite)
        return int(rows[0][0])
    result = await connection.execute(sqlite())
    return int(result.rowcount)


# -- maintenance on the schema owner's connection (a restore's ledger replay) -------------


async def workspace_member_user_ids(
    connection: AsyncConnection, org_id: uuid.UUID
) -> list[uuid.UUID]:
    """The accounts with a membership of `org_id` (the owner's connection sees them all)."""
    statement = sa.select(col(Membership.user_id)).where(col(Membership.org_id) == org_id)
    return list((await connection.execute(statement)).scalars())


async def workspace_contact_keys(connection: AsyncConnection, org_id: uuid.UUID) -> list[Any]:
    """Each contact of `org_id`: id, org_id, wa_id, user_id, created_at (for ledger matching)."""
    statement = sa.select(
        col(Contact.id),
        col(Contact.org_id),
        col(Contact.wa_id),
        col(Contact.user_id),
        col(Contact.created_at),
    ).where(col(Contact.org_id) == org_id)
    return list((await connection.execute(statement)).mappings())


async def delete_workspace_alerts_as_owner(connection: AsyncConnection, org_id: uuid.UUID) -> int:
    """Delete the security alerts of `org_id` (not workspace-owned, so no cascade takes them)."""
    statement = sa.delete(SecurityAlert).where(col(SecurityAlert.org_id) == org_id)
    return int((await connection.execute(statement)).rowcount)


# -- in one workspace: the contact search's trigram indexes --------------------------------


async def matching_contacts(
    session: AsyncSession, pattern: str, digits: str | None, batch: int
) -> list[uuid.UUID]:
    """PostgreSQL: ids of the transaction's workspace's contacts (erased ones too) whose
    name, profile name, phone number or WhatsApp id matches the ILIKE `pattern`, or whose
    WhatsApp id matches the LIKE `digits` (both escaped with `/`): one for each column
    that matches, at most `batch` in all.

    Read by `weflux_matching_contacts` (migrations 0025 and 0033: `lower(column) LIKE
    lower(pattern)`, which is ILIKE, on the trigram indexes of `lower(column)`), which
    the app's own statements cannot use under row-level security (ILIKE is not
    LEAKPROOF). It crosses no workspace: the caller reads its page among these ids in its
    scoped session and tests the term again.
    """
    connection = await session.connection()
    call = text("SELECT weflux_matching_contacts(:pattern, :digits, :batch)")
    result = await connection.execute(call, {"pattern": pattern, "digits": digits, "batch": batch})
    return [row[0] for row in result.all()]
