"""The team: members, invitations, roles, removal."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.passwords import hash_password
from weflux.auth.permissions import Permission, has_permission, may_invite
from weflux.auth.principal import Principal
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import TokenCodec, token_hash
from weflux.crypto.keyring import KeyRing
from weflux.db import Database, after_commit
from weflux.emails import normalize_email
from weflux.errors import (
    Conflict,
    Forbidden,
    InvalidCredentials,
    MfaRequired,
    NotFound,
    RateLimited,
)
from weflux.mail.mailer import Mailer, compose, send_quietly
from weflux.models import (
    AuthSession,
    Invitation,
    Membership,
    Organization,
    RemovalReason,
    Role,
    User,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services import sessions as session_service
from weflux.services import two_factor
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.auth import check_new_password
from weflux.services.removals import record_removal
from weflux.services.sessions import TokenPair
from weflux.throttle.ratelimit import RateLimiter

INVITATION_TTL = timedelta(days=7)
# The rate limit of `resendInvitation`, per invitation (WEFLUX_RATE_LIMIT_INVITATION_RESEND).
RESEND_LIMIT = "invitation_resend"
# Invitation emails (sent by `inviteMember` and `resendInvitation`) per workspace, and per
# workspace and address: the platform's mailer is no one's to spam, nor a mailbox to
# flood. Not per address alone: another workspace could then spend it, and block a
# person's real invitation.
EMAIL_LIMITS = ("invitation_workspace", "invitation_email")
HIGHER_RIGHTS = (
    "A pending invitation for this email was made by someone with more rights than yours: "
    "ask an Admin"
)


@dataclass(frozen=True)
class Postman:
    """How invitation emails leave: the platform's mailer, and the app's URL for the link."""

    mailer: Mailer
    app_url: str


def invitation_link(app_url: str, token: str) -> str:
    """The accept link: the token in the fragment, which browsers never send to a server."""
    return f"{app_url.rstrip('/')}/invitations/accept#token={token}"


def _invitation_email(
    postman: Postman, invitation: Invitation, token: str, workspace: str
) -> EmailMessage:
    return compose(
        postman.mailer,
        to=invitation.email,
        subject=f"You are invited to {workspace} on Weflux",
        body=(
            f"Hello {invitation.name},\n\n"
            f"You are invited to join the workspace {workspace} on Weflux as "
            f"{invitation.role.value.capitalize()}. Accept within 7 days:\n\n"
            f"{invitation_link(postman.app_url, token)}\n\n"
            "If you did not expect this, ignore this email: nothing happens without you.\n"
        ),
    )


async def _mail_after_commit(
    session: AsyncSession, postman: Postman | None, invitation: Invitation, token: str
) -> None:
    """Send the invitation once the transaction has committed (never for a rolled-back one).

    A failure is logged without the message or its link; the token is never logged."""
    if postman is None:
        return
    organization = await session.get(Organization, invitation.org_id)
    message = _invitation_email(
        postman, invitation, token, organization.name if organization else "Weflux"
    )

    async def send() -> None:
        await send_quietly(postman.mailer, message)

    after_commit(session, send)


async def may_manage_invitation(
    session: AsyncSession, principal: Principal, invitation: Invitation
) -> bool:
    """Whether the caller may revoke, resend or replace `invitation`.

    Admins may manage any. A Manager only invitations they could have made (role AGENT)
    and that nobody with more rights made: not an Admin's (by the inviter's current role;
    an inviter who left the workspace has no rights left to protect).
    """
    if principal.can(Permission.INVITE_ANY_ROLE):
        return True
    if not may_invite(principal.role, invitation.role):
        return False
    if invitation.invited_by_membership_id is None:
        return True
    inviter = await session.get(Membership, invitation.invited_by_membership_id)
    return inviter is None or not has_permission(inviter.role, Permission.INVITE_ANY_ROLE)


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
    limiter: RateLimiter,
    postman: Postman | None = None,
) -> tuple[Invitation, str]:
    """A single-use invitation (7 days); the token is returned once and stored hashed.

    The invitee is emailed the accept link once the transaction commits (`postman`). A
    pending invitation for the same email is replaced only when the caller may manage it
    (`may_manage_invitation`): else `CONFLICT`, and the pending one stays. Each email counts
    against the workspace's and the address's invitation limits (`RATE_LIMITED`).
    """
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
    # A new invitation for the same email replaces the pending one, unless someone with
    # more rights made it (an expired one is dead: anyone may replace it).
    now = utcnow()
    pending = (
        await session.exec(
            select(Invitation)
            .where(func.lower(Invitation.email) == email, col(Invitation.accepted_at).is_(None))
            .with_for_update()
        )
    ).all()
    for previous in pending:
        if previous.expires_at > now and not await may_manage_invitation(
            session, principal, previous
        ):
            raise Conflict(HIGHER_RIGHTS)
    await _spend_invitation_email(limiter, principal.org_id, email)
    if pending:
        await session.exec(
            delete(Invitation).where(col(Invitation.id).in_([p.id for p in pending]))
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
        details={"role": role.value, "replaced": len(pending)},
    )
    await _mail_after_commit(session, postman, invitation, token)
    return invitation, token


async def _spend_invitation_email(limiter: RateLimiter, org_id: uuid.UUID, email: str) -> None:
    """Count one invitation email of the workspace to `email`; RATE_LIMITED past a limit."""
    for name, key in zip(EMAIL_LIMITS, (str(org_id), f"{org_id} {email}"), strict=True):
        decision = await limiter.hit(name, key)
        if not decision.allowed:
            raise RateLimited(
                "Too many invitation emails were sent; try again later",
                retry_after=decision.retry_after,
            )


async def pending_invitations(session: AsyncSession, principal: Principal) -> Sequence[Invitation]:
    """The workspace's pending (unaccepted, unexpired) invitations, oldest first."""
    principal.require(Permission.INVITE_AGENTS, "Your role cannot see invitations")
    return (
        await session.exec(
            select(Invitation)
            .where(col(Invitation.accepted_at).is_(None), col(Invitation.expires_at) > utcnow())
            .order_by(col(Invitation.created_at), col(Invitation.id))
            .limit(100)
        )
    ).all()


async def _manageable(
    session: AsyncSession, principal: Principal, invitation_id: uuid.UUID
) -> Invitation:
    principal.require(Permission.INVITE_AGENTS, "Your role cannot manage invitations")
    invitation = await session.get(Invitation, invitation_id, with_for_update=True)
    if invitation is None or invitation.accepted_at is not None:
        raise NotFound("Invitation not found")
    if not await may_manage_invitation(session, principal, invitation):
        raise Forbidden("This invitation was made by someone with more rights than yours")
    return invitation


async def revoke_invitation(
    session: AsyncSession, principal: Principal, meta: RequestMeta, invitation_id: uuid.UUID
) -> uuid.UUID:
    """Delete a pending invitation: its link stops working. Answers its id."""
    invitation = await _manageable(session, principal, invitation_id)
    await session.delete(invitation)
    await session.flush()
    await record(
        session,
        Action.INVITATION_REVOKED,
        actor=principal,
        target_type="Invitation",
        target_id=invitation.id,
        meta=meta,
        details={"role": invitation.role.value},
    )
    return invitation.id


async def resend_invitation(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    limiter: RateLimiter,
    invitation_id: uuid.UUID,
    *,
    postman: Postman | None,
) -> Invitation:
    """Email the invitation again with a new token (the old link stops working) and a
    new 7 days; rate-limited per invitation."""
    invitation = await _manageable(session, principal, invitation_id)
    decision = await limiter.hit(RESEND_LIMIT, str(invitation.id))
    if not decision.allowed:
        raise RateLimited(
            "This invitation was sent too often; try again later",
            retry_after=decision.retry_after,
        )
    await _spend_invitation_email(limiter, principal.org_id, invitation.email)
    token = secrets.token_urlsafe(32)
    invitation.token_hash = token_hash(token)
    invitation.expires_at = utcnow() + INVITATION_TTL
    session.add(invitation)
    await session.flush()
    await record(
        session,
        Action.INVITATION_RESENT,
        actor=principal,
        target_type="Invitation",
        target_id=invitation.id,
        meta=meta,
        details={"role": invitation.role.value},
    )
    await _mail_after_commit(session, postman, invitation, token)
    return invitation


async def accept_invitation(
    db: Database,
    codec: TokenCodec,
    guard: PasswordGuard,
    meta: RequestMeta,
    *,
    token: str,
    name: str,
    password: str,
    keyring: KeyRing,
    code: str | None = None,
    broker: Broker | None = None,
) -> TokenPair:
    """Join the inviting workspace: as a new user, or (with their password) an existing one.

    An existing account's password is checked by the password guard, like a login, and
    its second factor too (`code`, `MFA_REQUIRED` without it): else whoever holds only
    the password could join the account to a workspace of their own and, as its Admin,
    reset the account's two factors (`resetMemberTwoFactor`). No database connection is
    held while bcrypt runs: the invitation is read first, and claimed (single use) in a
    second unit of work.
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
        if account is not None:
            # Read through the new membership (PostgreSQL's row-level security shows a
            # user to a workspace they belong to); a refusal rolls the membership back.
            # Locked, as an Admin's reset locks it (`two_factor.reset_member`): a reset
            # that runs meanwhile waits, then sees this workspace and is refused (or,
            # locking first, ends before this reads the user's two factors).
            joining = await session.get(
                User, account.user_id, populate_existing=True, with_for_update=True
            )
            if joining is None:
                raise invalid
            if two_factor.enabled(joining):
                if not code:
                    raise MfaRequired(
                        "A code from the authenticator app is required to join", mfa_token=None
                    )
                await two_factor.check_totp(session, guard, keyring, joining, meta.ip, code)
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
            joining=True,  # nobody joins during a deletion's grace period
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
    if role == Role.AGENT and previous != Role.AGENT:
        # Conversations assigned to others leave the member's view.
        record_removal(
            session,
            authenticator.broker,
            target.org_id,
            RemovalReason.ROLE_NARROWED,
            member_id=target.id,
        )
    return target


async def remove(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    membership_id: uuid.UUID,
) -> None:
    """Remove a member; every session of theirs ends with the membership. An account the
    removal leaves in no workspace (and invited to none) is deleted with it, as a
    workspace's deletion deletes it (docs/lifecycle.md#accounts-left-without-a-workspace)."""
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
    account_deleted = await crossings.delete_orphan_users(session, {target.user_id}) == 1
    # Their conversations are unassigned with them (ON DELETE SET NULL): counts move.
    publish_after_commit(
        session, authenticator.broker, principal.org_id, EventName.INBOX_COUNTS_UPDATED
    )
    await record(
        session,
        Action.MEMBER_REMOVED,
        actor=principal,
        target_type="Member",
        target_id=target.id,
        meta=meta,
        details={
            "user": str(target.user_id),
            "sessions_ended": len(session_ids),
            "account_deleted": account_deleted,
        },
    )

    async def announce() -> None:
        await authenticator.publish_revocation(session_ids=session_ids, membership_ids=[target.id])

    after_commit(session, announce)
