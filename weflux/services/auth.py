"""Login, refresh rotation with reuse detection, logout, password changes."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.passwords import PasswordPolicyError, check_password_policy, hash_password
from weflux.auth.principal import Principal
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import InvalidTokenError, IssuedToken, TokenCodec, TokenStamp, token_hash
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.emails import normalize_email
from weflux.errors import (
    BadUserInput,
    Conflict,
    Forbidden,
    InvalidCredentials,
    MfaRequired,
    RateLimited,
    TokenReused,
    Unauthenticated,
)
from weflux.models import AuthSession, Membership, Organization, User, utcnow
from weflux.secops.detectors import Detectors
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services import sessions as session_service
from weflux.services import two_factor
from weflux.services.audit import Action, RequestMeta, Severity, record
from weflux.services.sessions import TokenPair

log = logging.getLogger(__name__)


def check_new_password(password: str, *, email: str, user_inputs: list[str]) -> None:
    try:
        check_password_policy(password, email=email, user_inputs=user_inputs)
    except PasswordPolicyError as exc:
        raise BadUserInput(
            "The password does not meet the policy",
            details=[{"field": "password", "message": str(exc)}],
        ) from None


async def login(
    db: Database,
    codec: TokenCodec,
    guard: PasswordGuard,
    meta: RequestMeta,
    *,
    email: str,
    password: str,
    organization_id: uuid.UUID | None,
    detectors: Detectors | None = None,
) -> TokenPair:
    """Check the password and open a session in one of the user's workspaces.

    Unknown emails and wrong passwords get the same answer at the same cost, and count
    alike against the password guard's limits. A right password of a user with two
    factors answers `MfaRequired` with the mfaToken of this step (POST /auth/mfa). No
    database connection is held while bcrypt runs: the look-up and the writes are short
    units of work.
    """
    email = normalize_email(email)
    async with db.session() as session:
        account = await crossings.account_by_email(session, email)
        workspaces = await crossings.user_workspaces(session, account.user_id) if account else []
    user_id = account.user_id if account else None
    try:
        valid = await guard.check(
            email=email,
            ip=meta.ip,
            password=password,
            password_hash=account.password_hash if account else None,
        )
    except RateLimited:
        # Throttled attempts count for the detectors like failed ones.
        if detectors is not None:
            await detectors.login_failed(
                db, meta, email=email, user_id=user_id, workspaces=[w.org_id for w in workspaces]
            )
        raise
    if not valid or account is None or not workspaces:
        if detectors is not None:
            await detectors.login_failed(
                db, meta, email=email, user_id=user_id, workspaces=[w.org_id for w in workspaces]
            )
        if account is not None and workspaces:
            async with db.session() as session:
                for workspace in workspaces:
                    await use_workspace(session, workspace.org_id)
                    await record(
                        session,
                        Action.LOGIN_FAILED,
                        actor_user_id=account.user_id,
                        target_type="User",
                        target_id=account.user_id,
                        meta=meta,
                        severity=Severity.WARNING,
                    )
                    await session.flush()
        log.info("login failed", extra={"client": meta.ip})
        raise InvalidCredentials("Invalid email or password")
    chosen = organization_id or workspaces[0].org_id
    if chosen not in {w.org_id for w in workspaces}:
        raise Forbidden("You are not a member of that workspace")
    mfa_token = None
    async with db.session(chosen) as session:
        user = await session.get(User, account.user_id)
        if user is not None and two_factor.enabled(user):
            mfa_token = await two_factor.challenge(session, codec, user, chosen)
    if mfa_token is not None:
        raise MfaRequired("A code from the authenticator app is required", mfa_token=mfa_token)
    async with db.session(chosen) as session:
        membership = (
            await session.exec(select(Membership).where(Membership.user_id == account.user_id))
        ).one()
        found = await session.get(Organization, chosen)
        assert found is not None  # the user's membership holds it
        organization = found
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
            Action.LOGIN_SUCCEEDED,
            actor_user_id=account.user_id,
            actor_membership_id=membership.id,
            target_type="Session",
            target_id=pair.session_id,
            meta=meta,
        )
        if detectors is not None:
            await detectors.login_succeeded(
                session, meta, user_id=account.user_id, membership_id=membership.id
            )
    return session_service.listing_workspaces(pair, workspaces)


async def switch(
    db: Database,
    codec: TokenCodec,
    guard: PasswordGuard,
    keyring: KeyRing,
    principal: Principal,
    meta: RequestMeta,
    *,
    organization_id: uuid.UUID,
    code: str | None,
) -> TokenPair:
    """`POST /auth/switch`: a new session in another workspace of the same user.

    No password, but no shortcut past the second factor either: a user with two factors
    sends a fresh code with every switch (`MFA_REQUIRED` without it), whatever the source
    session proved, so a session that never passed the second factor (one opened by
    accepting an invitation with the password alone) cannot reach another workspace
    without it. The new session is not freshly authenticated (sensitive operations ask
    for `POST /auth/reauthenticate`), and a workspace requiring two factors holds a user
    without them at enrollment, as at login. The source session must be live.
    """
    async with db.session(principal.org_id) as session:
        source = await session.get(AuthSession, principal.session_id)
        now = utcnow()
        if source is None or source.revoked_at is not None or source.expires_at <= now:
            raise Unauthenticated("Authentication required")
        workspaces = await crossings.user_workspaces(session, principal.user_id)
    if organization_id == principal.org_id:
        raise Conflict("This session is already in that workspace")
    if organization_id not in {w.org_id for w in workspaces}:
        raise Forbidden("You are not a member of that workspace")
    async with db.session(organization_id) as session:
        user = await session.get(User, principal.user_id)
        if user is None:
            raise Unauthenticated("Authentication required")
        if two_factor.enabled(user):
            if not code:
                raise MfaRequired(
                    "A code from the authenticator app is required to switch", mfa_token=None
                )
            await two_factor.check_totp(session, guard, keyring, user, meta.ip, code)
        membership = (
            await session.exec(select(Membership).where(Membership.user_id == principal.user_id))
        ).one()
        organization = await session.get(Organization, organization_id)
        assert organization is not None  # the user's membership holds it
        pair = await session_service.open_session(
            session,
            codec,
            membership=membership,
            organization=organization,
            meta=meta,
            authenticated=False,
        )
        await record(
            session,
            Action.SESSION_SWITCHED,
            actor_user_id=principal.user_id,
            actor_membership_id=membership.id,
            target_type="Session",
            target_id=pair.session_id,
            meta=meta,
            # Nothing of the source workspace (its id, the session's): another tenant's.
            details={"second_factor": "totp" if two_factor.enabled(user) else "none"},
        )
    return session_service.listing_workspaces(pair, workspaces)


async def refresh(
    db: Database,
    codec: TokenCodec,
    authenticator: Authenticator,
    meta: RequestMeta,
    refresh_token: str,
    *,
    reuse_interval: timedelta,
) -> TokenPair:
    """Rotate a refresh token, within the session's absolute lifetime.

    A spent token revokes the whole session (RFC 9700 reuse detection), except the one
    rotated last, presented again within `reuse_interval` of its rotation: that answers
    the very pair it was swapped for (Auth0's reuse interval, for browser tabs refreshing
    at once). Of two concurrent refreshes with one token, one rotates and the other gets
    the same successor pair: never two live pairs.
    """
    try:
        claims = codec.verify(refresh_token, "refresh")
    except InvalidTokenError:
        raise Unauthenticated("Invalid refresh token") from None
    presented = token_hash(refresh_token)
    ids = {"user_id": claims.user_id, "org_id": claims.org_id, "session_id": claims.session_id}
    reused = False
    async with db.session(claims.org_id) as session:
        current = await session.get(AuthSession, claims.session_id)
        now = utcnow()
        if current is None or current.revoked_at is not None or current.expires_at <= now:
            raise Unauthenticated("Invalid refresh token")
        ends = session_service.session_end(codec, current)
        if ends <= now:
            raise Unauthenticated("This session has reached its maximum age; log in again")
        if current.refresh_token_hash == presented:
            new_refresh = codec.issue("refresh", **ids, not_after=ends)
            access = codec.issue("access", **ids, not_after=ends)
            rotated = (
                await session.exec(
                    update(AuthSession)
                    .where(
                        col(AuthSession.id) == claims.session_id,
                        col(AuthSession.refresh_token_hash) == presented,
                        col(AuthSession.revoked_at).is_(None),
                    )
                    .values(
                        refresh_token_hash=token_hash(new_refresh.token),
                        previous_refresh_token_hash=presented,
                        rotated_at=now,
                        successor_stamps={
                            "refresh": new_refresh.stamp.as_json(),
                            "access": access.stamp.as_json(),
                        },
                        expires_at=new_refresh.expires_at,
                        last_used_at=now,
                    )
                    .returning(col(AuthSession.membership_id))
                )
            ).first()
            if rotated is not None:
                return await _pair_of(session, rotated[0], claims.org_id, access, new_refresh)
            # A concurrent refresh rotated this token first: read what it stored.
            current = (
                await session.exec(
                    select(AuthSession)
                    .where(AuthSession.id == claims.session_id)
                    .execution_options(populate_existing=True)
                )
            ).one()
        successor = _successor(codec, current, presented, now, reuse_interval, ids)
        if successor is not None:
            access, new_refresh = successor
            return await _pair_of(
                session, current.membership_id, claims.org_id, access, new_refresh
            )
        if current.revoked_at is None:
            reused = True
            await session_service.revoke(
                session, authenticator, [current.id], reason="refresh_token_reused"
            )
            await record(
                session,
                Action.REFRESH_REUSED,
                actor_user_id=current.user_id,
                actor_membership_id=current.membership_id,
                target_type="Session",
                target_id=current.id,
                meta=meta,
                severity=Severity.HIGH,
            )
            await record_security_event(
                session,
                authenticator.broker,
                SecurityKind.REFRESH_REUSE,
                "A spent refresh token was presented again; the session is revoked",
                actor=Actor(current.user_id, current.membership_id),
                meta=meta,
            )
    if reused:
        log.warning("refresh token reuse: session revoked", extra={"client": meta.ip})
        raise TokenReused("This refresh token was already used; the session is revoked")
    raise Unauthenticated("Invalid refresh token")


def _successor(
    codec: TokenCodec,
    current: AuthSession,
    presented: str,
    now: datetime,
    reuse_interval: timedelta,
    ids: dict[str, uuid.UUID],
) -> tuple[IssuedToken, IssuedToken] | None:
    """The (access, refresh) pair the presented token was just swapped for, if it may be
    answered again: it is the token rotated last, within the interval, and its successor
    is still the session's current refresh token."""
    if (
        current.revoked_at is not None
        or current.previous_refresh_token_hash != presented
        or current.rotated_at is None
        or now - current.rotated_at > reuse_interval
        or not current.successor_stamps
    ):
        return None
    stamps = current.successor_stamps
    new_refresh = codec.reissue("refresh", TokenStamp.from_json(stamps["refresh"]), **ids)
    if token_hash(new_refresh.token) != current.refresh_token_hash:
        return None  # the secret changed meanwhile
    access = codec.reissue("access", TokenStamp.from_json(stamps["access"]), **ids)
    return access, new_refresh


async def _pair_of(
    session: AsyncSession,
    membership_id: uuid.UUID,
    org_id: uuid.UUID,
    access: IssuedToken,
    new_refresh: IssuedToken,
) -> TokenPair:
    membership = await session.get(Membership, membership_id)
    organization = await session.get(Organization, org_id)
    if membership is None or organization is None:  # removed meanwhile
        raise Unauthenticated("Invalid refresh token")
    return TokenPair(access, new_refresh, organization, membership, [organization])


async def logout(
    db: Database, authenticator: Authenticator, principal: Principal, meta: RequestMeta
) -> None:
    """End the principal's own session (`POST /auth/logout`), audited like every other end."""
    async with db.session(principal.org_id) as session:
        ended = await session_service.revoke(
            session, authenticator, [principal.session_id], reason="logout"
        )
        if ended:  # a concurrent logout of the same session ended it: audited once
            await record(
                session,
                Action.LOGGED_OUT,
                actor=principal,
                target_type="Session",
                target_id=principal.session_id,
                meta=meta,
            )


async def change_password(
    db: Database,
    authenticator: Authenticator,
    guard: PasswordGuard,
    principal: Principal,
    meta: RequestMeta,
    *,
    current_password: str,
    new_password: str,
) -> None:
    """Change one's password and end every other session of the user, in every workspace.

    The current password is checked by the password guard, like a login: wrong guesses
    count against the same per-account limits, over HTTP and WebSocket alike.
    """
    async with db.session(principal.org_id) as session:
        user = await session.get(User, principal.user_id)
    if user is None:
        raise Unauthenticated("Authentication required")
    if not await guard.check(
        email=user.email, ip=meta.ip, password=current_password, password_hash=user.password_hash
    ):
        raise BadUserInput(
            "The current password is wrong",
            details=[{"field": "currentPassword", "message": "The current password is wrong"}],
        )
    check_new_password(new_password, email=user.email, user_inputs=[user.name])
    new_hash = await hash_password(new_password)
    async with db.session(principal.org_id) as session:
        await session.exec(
            update(User)
            .where(col(User.id) == user.id)
            # A login's password step in flight (its mfaToken) was made with the old
            # password: it ends with it, like every other session.
            .values(password_hash=new_hash, password_changed_at=utcnow(), mfa_challenge_hash=None)
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
