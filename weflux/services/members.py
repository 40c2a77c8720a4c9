"""The team: members, invitations, roles, removal."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.passwords import hash_password
from weflux.auth.permissions import Permission, may_invite
from weflux.auth.principal import Principal
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import TokenCodec, token_hash
from weflux.db import Database, after_commit
from weflux.emails import normalize_email
from weflux.errors import Conflict, Forbidden, InvalidCredentials, NotFound
from weflux.models import AuthSession, Invitation, Membership, Organization, Role, User, utcnow
from weflux.realtime.broker import Broker
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services import sessions as session_service
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.auth import check_new_password
from weflux.services.sessions import TokenPair

INVITATION_TTL = timedelta(days=7)


async def members(session: AsyncSession) -> Sequence[tuple[Membership, User]]:
    """Every member of the workspace, oldest first."""
    rows = await session.exec(
        select(Membership, User)
        .join(User, col(User.id) == col(Membership.user_id))
        .order_by(col(Membership.created_at), col(Membership.id))
    )
    return rows.all()


async def member_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user, if a member of the session's workspace; None for anyone else."""
    found = await session.exec(
        select(User)
        .join(Membership, col(Membership.user_id) == col(User.id))
        .where(col(User.id) == user_id)
    )
    return found.first()


async def invite(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    *,
    email: str,
    name: str,
    role: Role,
) -> tuple[Invitation, str]:
    """A single-use invitation (7 days); the token is returned once and stored hashed."""
    if not may_invite(principal.role, role):
        raise Forbidden(
            "Managers can invite Agents only"
            if principal.can(Permission.INVITE_AGENTS)
            else "Your role cannot invite members"
        )
    email = normalize_email(email)
    already = (
        await session.exec(
            select(Membership.id)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(func.lower(User.email) == email)
        )
    ).first()
    if already is not None:
        raise Conflict("This person is already a member of the workspace")
    # A new invitation for the same email replaces any pending one.
    await session.exec(
        delete(Invitation).where(
            func.lower(Invitation.email) == email, col(Invitation.accepted_at).is_(None)
        )
    )
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        email=email,
        name=name,
        role=role,
        token_hash=token_hash(token),
        invited_by_membership_id=principal.membership_id,
        expires_at=utcnow() + INVITATION_TTL,
    )
    session.add(invitation)
    await session.flush()
    await record(
        session,
        Action.MEMBER_INVITED,
        actor=principal,
        target_type="Invitation",
        target_id=invitation.id,
        meta=meta,
        details={"role": role.value},
    )
    return invitation, token


async def accept_invitation(
    db: Database,
    codec: TokenCodec,
    guard: PasswordGuard,
    meta: RequestMeta,
    *,
    token: str,
    name: str,
    password: str,
    broker: Broker | None = None,
) -> TokenPair:
    """Join the inviting workspace: as a new user, or (with their password) an existing one.

    An existing account's password is checked by the password guard, like a login. No
    database connection is held while bcrypt runs: the invitation is read first, and
    claimed (single use) in a second unit of work.
    """
    invalid = NotFound("This invitation is invalid, used or expired")
    digest = token_hash(token)
    async with db.session() as session:
        found = await crossings.invitation_by_token(session, digest)
        if found is None:
            raise invalid
        await use_workspace(session, found.org_id)
        invitation = await session.get(Invitation, found.id)
        if invitation is None or invitation.accepted_at is not None:
            raise invalid
        if invitation.expires_at <= utcnow():
            raise invalid
        account = await crossings.account_by_email(session, invitation.email)
    new_hash: str | None = None
    if account is not None:
        if not await guard.check(
            email=invitation.email,
            ip=meta.ip,
            password=password,
            password_hash=account.password_hash,
        ):
            raise InvalidCredentials(
                "This email has an account: give its password to join the workspace"
            )
    else:
        check_new_password(password, email=invitation.email, user_inputs=[name])
        new_hash = await hash_password(password)
    async with db.session(invitation.org_id) as session:
        if account is not None:
            member = (
                await session.exec(select(Membership).where(Membership.user_id == account.user_id))
            ).first()
            if member is not None:
                raise Conflict("You are already a member of this workspace")
            user_id = account.user_id
        else:
            assert new_hash is not None
            user = User(email=invitation.email, name=name, password_hash=new_hash)
            try:
                async with session.begin_nested():
                    session.add(user)
                    await session.flush()
            except IntegrityError:  # the email got an account meanwhile
                raise Conflict("This email got an account meanwhile: accept again") from None
            user_id = user.id
        membership = Membership(user_id=user_id, role=invitation.role)
        session.add(membership)
        await session.flush()
        claimed = (
            await session.exec(
                update(Invitation)
                .where(col(Invitation.id) == invitation.id, col(Invitation.accepted_at).is_(None))
                .values(accepted_at=utcnow(), accepted_membership_id=membership.id)
            )
        ).rowcount
        if claimed != 1:  # accepted concurrently: single use
            raise invalid
        organization = await session.get(Organization, invitation.org_id)
        assert organization is not None
        pair = await session_service.open_session(
            session,
            codec,
            membership=membership,
            organization=organization,
            meta=meta,
            authenticated=True,
        )
        await record(
            session,
            Action.MEMBER_JOINED,
            actor_user_id=user_id,
            actor_membership_id=membership.id,
            target_type="Member",
            target_id=membership.id,
            meta=meta,
            details={"role": membership.role.value, "invitation": str(invitation.id)},
        )
        if membership.role == Role.ADMIN and broker is not None:
            await record_security_event(
                session,
                broker,
                SecurityKind.ADMIN_GRANTED,
                "A new member joined as Admin by invitation",
                actor=Actor(user_id, membership.id),
                meta=meta,
                details={"member_id": str(membership.id), "invitation": str(invitation.id)},
            )
    return TokenPair(pair.access, pair.refresh, organization, membership, [organization])


async def _admins_locked(session: AsyncSession) -> Sequence[Membership]:
    """The workspace's Admins, row-locked on PostgreSQL so two demotions cannot race."""
    return (
        await session.exec(
            select(Membership).where(Membership.role == Role.ADMIN).with_for_update()
        )
    ).all()


async def _target(session: AsyncSession, membership_id: uuid.UUID) -> Membership:
    target = await session.get(Membership, membership_id)
    if target is None:
        raise NotFound("Member not found")
    return target


async def update_role(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    membership_id: uuid.UUID,
    role: Role,
) -> Membership:
    principal.require(Permission.MANAGE_MEMBERS, "Only an Admin can change roles")
    target = await _target(session, membership_id)
    if target.role == role:
        return target
    if target.role == Role.ADMIN:
        admins = await _admins_locked(session)
        if [a.id for a in admins] == [target.id]:
            raise Conflict("The last Admin of a workspace cannot be demoted")
    previous = target.role
    target.role = role
    await session.flush()
    await record(
        session,
        Action.ROLE_CHANGED,
        actor=principal,
        target_type="Member",
        target_id=target.id,
        meta=meta,
        details={"from": previous.value, "to": role.value},
    )
    if role == Role.ADMIN:
        await record_security_event(
            session,
            authenticator.broker,
            SecurityKind.ADMIN_GRANTED,
            f"A member was made Admin (was {previous.value})",
            actor=Actor(principal.user_id, principal.membership_id),
            meta=meta,
            details={"member_id": str(target.id), "from": previous.value},
        )

    async def announce() -> None:
        await authenticator.publish_revocation(membership_ids=[target.id])

    after_commit(session, announce)
    return target


async def remove(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    membership_id: uuid.UUID,
) -> None:
    """Remove a member; every session of theirs ends with the membership."""
    principal.require(Permission.MANAGE_MEMBERS, "Only an Admin can remove members")
    target = await _target(session, membership_id)
    if target.role == Role.ADMIN:
        admins = await _admins_locked(session)
        if [a.id for a in admins] == [target.id]:
            raise Conflict("The last Admin of a workspace cannot be removed")
    session_ids = list(
        (
            await session.exec(select(AuthSession.id).where(AuthSession.membership_id == target.id))
        ).all()
    )
    await session.delete(target)
    await session.flush()
    await record(
        session,
        Action.MEMBER_REMOVED,
        actor=principal,
        target_type="Member",
        target_id=target.id,
        meta=meta,
        details={"user": str(target.user_id), "sessions_ended": len(session_ids)},
    )

    async def announce() -> None:
        await authenticator.publish_revocation(session_ids=session_ids, membership_ids=[target.id])

    after_commit(session, announce)
