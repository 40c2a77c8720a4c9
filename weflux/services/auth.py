"""Sign-up, login, refresh rotation with reuse detection, logout, password changes."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import update
from sqlmodel import col, select

from weflux.auth import crossings
from weflux.auth.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    verify_password,
)
from weflux.auth.principal import Authenticator, Principal
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import InvalidTokenError, TokenCodec, token_hash
from weflux.db import Database
from weflux.errors import (
    BadUserInput,
    Conflict,
    Forbidden,
    InvalidCredentials,
    TokenReused,
    Unauthenticated,
)
from weflux.models import AuthSession, Membership, Organization, Role, User, utcnow
from weflux.services import sessions as session_service
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.sessions import TokenPair

log = logging.getLogger(__name__)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_new_password(password: str, *, email: str, user_inputs: list[str]) -> None:
    try:
        check_password_policy(password, email=email, user_inputs=user_inputs)
    except PasswordPolicyError as exc:
        raise BadUserInput(
            "The password does not meet the policy",
            details=[{"field": "password", "message": str(exc)}],
        ) from None


async def signup(
    db: Database,
    codec: TokenCodec,
    meta: RequestMeta,
    *,
    organization_name: str,
    name: str,
    email: str,
    password: str,
) -> TokenPair:
    """Create a workspace and its first Admin; answer with a token pair."""
    email = normalize_email(email)
    check_new_password(password, email=email, user_inputs=[name, organization_name])
    password_hash = await hash_password(password)
    async with db.session() as session:
        if await crossings.account_by_email(session, email) is not None:
            raise Conflict("An account with this email exists: log in instead")
        organization = Organization(name=organization_name)
        await use_workspace(session, organization.id)
        user = User(email=email, name=name, password_hash=password_hash)
        session.add_all([organization, user])
        await session.flush()
        membership = Membership(user_id=user.id, role=Role.ADMIN)
        session.add(membership)
        await session.flush()
        pair = await session_service.open_session(
            session, codec, membership=membership, organization=organization, meta=meta
        )
        await record(
            session,
            Action.WORKSPACE_CREATED,
            actor_user_id=user.id,
            actor_membership_id=membership.id,
            target_type="Organization",
            target_id=organization.id,
            meta=meta,
        )
    return TokenPair(pair.access, pair.refresh, organization, membership, [organization])


async def login(
    db: Database,
    codec: TokenCodec,
    meta: RequestMeta,
    *,
    email: str,
    password: str,
    organization_id: uuid.UUID | None,
) -> TokenPair:
    """Check the password and open a session in one of the user's workspaces.

    Unknown emails and wrong passwords get the same answer at the same cost.
    """
    email = normalize_email(email)
    async with db.session() as session:
        account = await crossings.account_by_email(session, email)
        valid = await verify_password(password, account.password_hash if account else None)
        user_id = account.user_id if account else None
        workspaces = await crossings.user_workspaces(session, user_id) if user_id else []
        if not valid or user_id is None or not workspaces:
            for workspace in workspaces:
                await use_workspace(session, workspace.org_id)
                await record(
                    session,
                    Action.LOGIN_FAILED,
                    actor_user_id=user_id,
                    target_type="User",
                    target_id=user_id,
                    meta=meta,
                    severity="warning",
                )
                await session.flush()
            failed = True
        else:
            failed = False
            chosen = organization_id or workspaces[0].org_id
            if chosen not in {w.org_id for w in workspaces}:
                raise Forbidden("You are not a member of that workspace")
            await use_workspace(session, chosen)
            membership = (
                await session.exec(select(Membership).where(Membership.user_id == user_id))
            ).one()
            found = await session.get(Organization, chosen)
            assert found is not None  # the user's membership holds it
            organization = found
            pair = await session_service.open_session(
                session, codec, membership=membership, organization=organization, meta=meta
            )
            await record(
                session,
                Action.LOGIN_SUCCEEDED,
                actor_user_id=user_id,
                actor_membership_id=membership.id,
                target_type="Session",
                target_id=pair.session_id,
                meta=meta,
            )
    if failed:
        log.info("login failed", extra={"client": meta.ip})
        raise InvalidCredentials("Invalid email or password")
    # The answer lists every workspace of the user (id and name only).
    listed = {w.org_id: Organization(id=w.org_id, name=w.name) for w in workspaces}
    listed[organization.id] = organization
    return TokenPair(pair.access, pair.refresh, organization, membership, list(listed.values()))


async def refresh(
    db: Database,
    codec: TokenCodec,
    authenticator: Authenticator,
    meta: RequestMeta,
    refresh_token: str,
) -> TokenPair:
    """Rotate a refresh token. A spent one revokes the whole session (RFC 9700 reuse
    detection); of two concurrent refreshes with one token at most one succeeds."""
    try:
        claims = codec.verify(refresh_token, "refresh")
    except InvalidTokenError:
        raise Unauthenticated("Invalid refresh token") from None
    presented = token_hash(refresh_token)
    reused = False
    async with db.session(claims.org_id) as session:
        ids = {"user_id": claims.user_id, "org_id": claims.org_id, "session_id": claims.session_id}
        new_refresh = codec.issue("refresh", **ids)
        now = utcnow()
        rotated = (
            await session.exec(  # type: ignore[call-overload]
                update(AuthSession)
                .where(
                    col(AuthSession.id) == claims.session_id,
                    col(AuthSession.refresh_token_hash) == presented,
                    col(AuthSession.revoked_at).is_(None),
                    col(AuthSession.expires_at) > now,
                )
                .values(
                    refresh_token_hash=token_hash(new_refresh.token),
                    expires_at=new_refresh.expires_at,
                    last_used_at=now,
                )
                .returning(col(AuthSession.membership_id))
            )
        ).first()
        if rotated is not None:
            membership = await session.get(Membership, rotated[0])
            organization = await session.get(Organization, claims.org_id)
            if membership is None or organization is None:  # removed meanwhile
                raise Unauthenticated("Invalid refresh token")
            access = codec.issue("access", **ids)
            return TokenPair(access, new_refresh, organization, membership, [organization])
        existing = await session.get(AuthSession, claims.session_id)
        if existing is not None and existing.revoked_at is None and existing.expires_at > now:
            reused = True
            await session_service.revoke(
                session, authenticator, [existing.id], reason="refresh_token_reused"
            )
            await record(
                session,
                Action.REFRESH_REUSED,
                actor_user_id=existing.user_id,
                actor_membership_id=existing.membership_id,
                target_type="Session",
                target_id=existing.id,
                meta=meta,
                severity="high",
            )
    if reused:
        log.warning("refresh token reuse: session revoked", extra={"client": meta.ip})
        raise TokenReused("This refresh token was already used; the session is revoked")
    raise Unauthenticated("Invalid refresh token")


async def logout(db: Database, authenticator: Authenticator, principal: Principal) -> None:
    async with db.session(principal.org_id) as session:
        await session_service.revoke(
            session, authenticator, [principal.session_id], reason="logout"
        )


async def change_password(
    db: Database,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    current_password: str,
    new_password: str,
) -> None:
    """Change one's password and end every other session of the user, in every workspace."""
    async with db.session(principal.org_id) as session:
        user = await session.get(User, principal.user_id)
    if user is None or not await verify_password(current_password, user.password_hash):
        raise BadUserInput(
            "The current password is wrong",
            details=[{"field": "currentPassword", "message": "The current password is wrong"}],
        )
    check_new_password(new_password, email=user.email, user_inputs=[user.name])
    new_hash = await hash_password(new_password)
    async with db.session(principal.org_id) as session:
        await session.exec(  # type: ignore[call-overload]
            update(User)
            .where(col(User.id) == user.id)
            .values(password_hash=new_hash, password_changed_at=utcnow())
        )
        others = [
            s
            for s in await crossings.user_sessions(session, user.id)
            if s.id != principal.session_id
        ]
        for org_id, session_ids in crossings.by_workspace(others).items():
            await use_workspace(session, org_id)
            await session_service.revoke(
                session, authenticator, session_ids, reason="password_changed"
            )
        await use_workspace(session, principal.org_id)
        await record(
            session,
            Action.PASSWORD_CHANGED,
            actor=principal,
            target_type="User",
            target_id=user.id,
            meta=meta,
            details={"sessions_revoked": len(others)},
        )
