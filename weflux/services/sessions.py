"""Login sessions: open, rotate, list and revoke."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.authenticator import Authenticator
from weflux.auth.crossings import Workspace
from weflux.auth.permissions import DELETING_WORKSPACE_MESSAGE, Permission
from weflux.auth.principal import Principal
from weflux.auth.tokens import IssuedToken, TokenCodec, token_hash
from weflux.db import after_commit
from weflux.errors import Forbidden, NotFound
from weflux.models import AuthSession, Membership, Organization, Role, utcnow
from weflux.services.audit import Action, RequestMeta, record

DELETING_WORKSPACE = "This workspace is being deleted"


@dataclass(frozen=True)
class TokenPair:
    """What signup, login, refresh and invitation acceptance answer."""

    access: IssuedToken
    refresh: IssuedToken
    organization: Organization
    membership: Membership
    organizations: Sequence[Organization] = ()
    session_id: uuid.UUID | None = None


async def open_session(
    session: AsyncSession,
    codec: TokenCodec,
    *,
    membership: Membership,
    organization: Organization,
    meta: RequestMeta,
    authenticated: bool,
    joining: bool = False,
) -> TokenPair:
    """A new session for `membership`, with its first token pair.

    No token of the session outlives `codec.session_max_age` from now. `authenticated`:
    whether the person proved who they are to open it (a password, a code); only then
    may it run sensitive operations right away (docs/security/two-factor.md).

    Every route that opens a session comes here (login, its second factor, a switch, an
    invitation, a sign-up), so the rule of a workspace being deleted is kept here: during
    its grace period only Admins get in (to cancel or export; docs/lifecycle.md), and
    nobody `joining` (accepting an invitation is neither; an Admin invited before the
    request could cancel it).

    The workspace's row is read again, locked for share until the session commits: a
    deletion requested meanwhile (it updates that row, then ends every session) waits for
    this one and ends it too, or this sees the deletion (PostgreSQL; SQLite writes one
    transaction at a time).
    """
    organization = await locked_workspace(session, organization.id)
    if organization.deletion_scheduled_at is not None and (
        joining or membership.role != Role.ADMIN
    ):
        raise Forbidden(DELETING_WORKSPACE)
    started = utcnow()
    auth_session = AuthSession(
        user_id=membership.user_id,
        membership_id=membership.id,
        refresh_token_hash="",
        created_at=started,
        authenticated_at=started if authenticated else None,
        expires_at=started + codec.refresh_ttl,
        ip_address=meta.ip,
        user_agent=(meta.user_agent or "")[:512] or None,
    )
    ids = {
        "user_id": membership.user_id,
        "org_id": membership.org_id,
        "session_id": auth_session.id,
    }
    ends = session_end(codec, auth_session)
    refresh = codec.issue("refresh", **ids, not_after=ends)
    access = codec.issue("access", **ids, not_after=ends)
    auth_session.refresh_token_hash = token_hash(refresh.token)
    auth_session.expires_at = refresh.expires_at
    session.add(auth_session)
    await session.flush()
    return TokenPair(access, refresh, organization, membership, session_id=auth_session.id)


async def locked_workspace(
    session: AsyncSession, org_id: uuid.UUID, *, update: bool = False
) -> Organization:
    """The workspace's row read again, locked for share until the transaction ends.

    `requestWorkspaceDeletion` writes that row first, then ends every session and destroys
    every credential: a transaction that read it here and then opens a session or stores
    a credential is waited for and its row ended or destroyed too, or it sees the
    deletion (PostgreSQL; SQLite writes one transaction at a time). `update`: locked as
    its UPDATE would (FOR NO KEY UPDATE; not FOR UPDATE, which every insert's foreign-key
    check waits for), by one that writes it after reading it (a deletion, a cancellation).
    """
    return (
        await session.exec(
            select(Organization)
            .where(Organization.id == org_id)
            .with_for_update(read=not update, key_share=update)
            .execution_options(populate_existing=True)
        )
    ).one()


async def refuse_while_deleting(session: AsyncSession, org_id: uuid.UUID) -> None:
    """FORBIDDEN when the workspace's deletion is scheduled, read under `locked_workspace`:
    for a mutation that stores credentials after a slow check (Meta, DNS) began before
    the deletion was requested, past the grace period's rule (weflux.gql.policy)."""
    if (await locked_workspace(session, org_id)).deletion_scheduled_at is not None:
        raise Forbidden(DELETING_WORKSPACE_MESSAGE)


# An advisory lock per workspace (class, hashtext of its id): every mutation that may not
# commit during a grace period holds it for share until it commits; the deletion request
# takes it alone, first (weflux.gql.policy.refusal_at_start). PostgreSQL only.
DELETION_LOCK_CLASS = 1718  # FEED_LOCK_CLASS is 1717
_SHARE_DELETION_LOCK = text("SELECT pg_advisory_xact_lock_shared(:lock_class, hashtext(:org))")
_TAKE_DELETION_LOCK = text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:org))")


async def share_deletion_lock(connection: AsyncConnection, org_id: uuid.UUID) -> None:
    """Hold off the workspace's deletion request until this transaction ends."""
    await connection.execute(
        _SHARE_DELETION_LOCK, {"lock_class": DELETION_LOCK_CLASS, "org": str(org_id)}
    )


async def take_deletion_lock(session: AsyncSession, org_id: uuid.UUID) -> None:
    """Wait for every mutation running in the workspace (PostgreSQL), and keep new ones
    waiting until this transaction ends: first in a deletion request, before any row."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(
            _TAKE_DELETION_LOCK, {"lock_class": DELETION_LOCK_CLASS, "org": str(org_id)}
        )


def listing_workspaces(pair: TokenPair, workspaces: Sequence[Workspace]) -> TokenPair:
    """`pair` answering a login or a switch: every workspace of the user listed (id and
    name only), the session's own as loaded."""
    listed = {w.org_id: Organization(id=w.org_id, name=w.name) for w in workspaces}
    listed[pair.organization.id] = pair.organization
    return replace(pair, organizations=list(listed.values()))


def session_end(codec: TokenCodec, auth_session: AuthSession) -> datetime:
    """When the session ends whatever its refreshes: its start plus the maximum age."""
    return auth_session.created_at + codec.session_max_age


async def revoke(
    session: AsyncSession,
    authenticator: Authenticator,
    session_ids: Sequence[uuid.UUID],
    *,
    reason: str,
) -> list[uuid.UUID]:
    """Revoke live sessions; every process forgets them once the transaction commits."""
    if not session_ids:
        return []
    now = utcnow()
    revoked = (
        (
            await session.exec(
                update(AuthSession)
                .where(col(AuthSession.id).in_(session_ids), col(AuthSession.revoked_at).is_(None))
                .values(revoked_at=now, revoked_reason=reason)
                .returning(col(AuthSession.id))
            )
        )
        .scalars()
        .all()
    )
    ids = list(revoked)

    async def announce() -> None:
        await authenticator.publish_revocation(session_ids=session_ids)

    after_commit(session, announce)
    return ids


async def sessions_of(
    session: AsyncSession, principal: Principal, membership_id: uuid.UUID | None
) -> Sequence[AuthSession]:
    """Unexpired sessions of a member (own by default; others' need MANAGE_MEMBERS)."""
    target = membership_id or principal.membership_id
    if target != principal.membership_id and not principal.can(Permission.MANAGE_MEMBERS):
        raise Forbidden("Only an Admin can read other members' sessions")
    if await session.get(Membership, target) is None:
        raise NotFound("Member not found")
    return (
        await session.exec(
            select(AuthSession)
            .where(AuthSession.membership_id == target, col(AuthSession.expires_at) > utcnow())
            .order_by(col(AuthSession.created_at).desc())
            .limit(100)
        )
    ).all()


async def revoke_one(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    session_id: uuid.UUID,
    meta: RequestMeta,
) -> AuthSession:
    """Revoke a session: one's own, or (Admin) anyone's in the workspace."""
    target = await session.get(AuthSession, session_id)
    if target is None or (
        target.membership_id != principal.membership_id
        and not principal.can(Permission.MANAGE_MEMBERS)
    ):
        raise NotFound("Session not found")
    await revoke(session, authenticator, [target.id], reason="revoked")
    await record(
        session,
        Action.SESSION_REVOKED,
        actor=principal,
        target_type="Session",
        target_id=target.id,
        meta=meta,
    )
    await session.refresh(target)
    return target
