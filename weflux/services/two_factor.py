"""Two factors: enrollment, codes, the login's second step, re-authentication, resets.

docs/security/two-factor.md is the reference. Every code is checked through the
password guard (`PasswordGuard.check_code`), so wrong codes are throttled per account
like wrong passwords. A TOTP code is consumed by moving `users.totp_last_step`
forward, and a recovery code by removing its hash, each with a conditional UPDATE: of
two requests with one code, one wins, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings, recovery_codes, totp
from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import InvalidTokenError, TokenCodec, token_hash
from weflux.crypto.fields import open_secret, seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database, after_commit
from weflux.emails import normalize_email
from weflux.errors import (
    BadUserInput,
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidMfaCode,
    NotFound,
    ReauthenticationRequired,
    Unauthenticated,
)
from weflux.models import AuthSession, Membership, Organization, User, new_id, utcnow
from weflux.secops.detectors import Detectors
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services import sessions as session_service
from weflux.services.audit import Action, RequestMeta, Severity, record
from weflux.services.sessions import TokenPair

WRONG_CODE = "The code is wrong, expired or already used"
OTHER_WORKSPACES = (
    "This member also belongs to other workspaces, which their two factors protect too: "
    "only the platform's operator can reset them (`weflux two-factor reset`)"
)
INVALID_MFA_TOKEN = "The mfaToken is invalid, expired or already used; log in again"  # noqa: S105


@dataclass(frozen=True)
class Enrollment:
    """What `beginTwoFactorEnrollment` shows, once: the secret, its URI and QR code."""

    secret: str
    otpauth_uri: str
    qr_code_svg: str


def enabled(user: User) -> bool:
    return user.two_factor_enabled_at is not None


async def _user(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User:
    user = await session.get(User, user_id, populate_existing=True, with_for_update=lock)
    if user is None:
        raise Unauthenticated("Authentication required")
    return user


async def _consume_totp(session: AsyncSession, keyring: KeyRing, user: User, code: str) -> bool:
    """Whether `code` is the user's current TOTP code, never accepted before (then consumed)."""
    secret = open_secret(keyring, user, "totp_secret_enc")
    if secret is None:
        return False
    step = totp.matching_step(secret.reveal(), code, utcnow(), user.totp_last_step)
    if step is None:
        return False
    result = await session.exec(
        update(User)
        .where(
            col(User.id) == user.id,
            or_(col(User.totp_last_step).is_(None), col(User.totp_last_step) < step),
        )
        .values(totp_last_step=step)
    )
    return bool(result.rowcount)


async def _consume_recovery_code(
    session: AsyncSession, keyring: KeyRing, user: User, code: str
) -> bool:
    """Whether `code` is one of the user's unused recovery codes (then it is used up)."""
    stored = user.recovery_code_hashes
    if not stored:
        return False
    presented = recovery_codes.matching(keyring, user.id, stored, code)
    if presented is None:
        return False
    remaining = " ".join(h for h in stored.split() if h != presented)
    result = await session.exec(
        update(User)
        .where(col(User.id) == user.id, col(User.recovery_code_hashes) == stored)
        .values(recovery_code_hashes=remaining)
    )
    return bool(result.rowcount)


def _new_recovery_codes(keyring: KeyRing, user: User) -> list[str]:
    codes = totp.new_recovery_codes()
    user.recovery_code_hashes = recovery_codes.stored_form(keyring, user.id, codes)
    return codes


async def check_totp(
    session: AsyncSession,
    guard: PasswordGuard,
    keyring: KeyRing,
    user: User,
    ip: str | None,
    code: str,
) -> None:
    """InvalidMfaCode unless `code` is a fresh TOTP code; counted by the guard."""

    async def verify() -> bool:
        return await _consume_totp(session, keyring, user, code)

    if not await guard.check_code(email=user.email, ip=ip, verify=verify):
        raise InvalidMfaCode(WRONG_CODE)


def _announce_membership(
    session: AsyncSession, authenticator: Authenticator, ids: list[uuid.UUID]
) -> None:
    """Once committed, every process re-reads these members (their `must_enroll`)."""

    async def announce() -> None:
        await authenticator.publish_revocation(membership_ids=ids)

    after_commit(session, announce)


# --- enrollment ----------------------------------------------------------------------


async def begin_enrollment(
    session: AsyncSession, keyring: KeyRing, principal: Principal
) -> Enrollment:
    """A new secret for the caller, sealed; it counts once a first code confirms it."""
    user = await _user(session, principal.user_id)
    if enabled(user):
        raise Conflict("Two-factor authentication is already on; disable it first")
    secret = totp.new_secret()
    seal(keyring, user, "totp_secret_enc", secret)
    user.totp_last_step = None
    await session.flush()
    uri = totp.provisioning_uri(secret, user.email)
    return Enrollment(secret=secret, otpauth_uri=uri, qr_code_svg=totp.qr_code_svg(uri))


async def confirm_enrollment(
    session: AsyncSession,
    guard: PasswordGuard,
    keyring: KeyRing,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    code: str,
) -> list[str]:
    """Turn two factors on with a first code; the ten recovery codes, shown once."""
    user = await _user(session, principal.user_id)
    if enabled(user):
        raise Conflict("Two-factor authentication is already on")
    if user.totp_secret_enc is None:
        raise BadUserInput(
            "Begin the enrollment first",
            details=[{"field": "code", "message": "call beginTwoFactorEnrollment first"}],
        )
    await check_totp(session, guard, keyring, user, meta.ip, code)
    await session.refresh(user)
    codes = _new_recovery_codes(keyring, user)
    user.two_factor_enabled_at = utcnow()
    await session.flush()
    await record(
        session,
        Action.TWO_FACTOR_ENABLED,
        actor=principal,
        target_type="User",
        target_id=user.id,
        meta=meta,
    )
    _announce_membership(session, authenticator, [principal.membership_id])
    return codes


async def regenerate_recovery_codes(
    session: AsyncSession,
    guard: PasswordGuard,
    keyring: KeyRing,
    principal: Principal,
    meta: RequestMeta,
    *,
    code: str,
) -> list[str]:
    """Ten new recovery codes (with a TOTP code); the old ones stop working."""
    user = await _user(session, principal.user_id)
    if not enabled(user):
        raise Conflict("Two-factor authentication is off")
    await check_totp(session, guard, keyring, user, meta.ip, code)
    await session.refresh(user)
    codes = _new_recovery_codes(keyring, user)
    await session.flush()
    await record(
        session,
        Action.RECOVERY_CODES_REGENERATED,
        actor=principal,
        target_type="User",
        target_id=user.id,
        meta=meta,
    )
    return codes


def _clear(user: User) -> None:
    user.totp_secret_enc = None
    user.two_factor_enabled_at = None
    user.totp_last_step = None
    user.recovery_code_hashes = None
    user.mfa_challenge_hash = None


async def disable(
    session: AsyncSession,
    guard: PasswordGuard,
    keyring: KeyRing,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    password: str,
    code: str,
) -> None:
    """Turn the caller's two factors off, with the password and a code."""
    user = await _user(session, principal.user_id)
    if not enabled(user):
        raise Conflict("Two-factor authentication is off")
    if not await guard.check(
        email=user.email, ip=meta.ip, password=password, password_hash=user.password_hash
    ):
        raise BadUserInput(
            "The password is wrong",
            details=[{"field": "password", "message": "The password is wrong"}],
        )
    await check_totp(session, guard, keyring, user, meta.ip, code)
    await session.refresh(user)
    _clear(user)
    await session.flush()
    await record(
        session,
        Action.TWO_FACTOR_DISABLED,
        actor=principal,
        target_type="User",
        target_id=user.id,
        meta=meta,
        severity=Severity.WARNING,
    )
    await record_security_event(
        session,
        authenticator.broker,
        SecurityKind.MFA_DISABLED,
        "A member turned their two-factor authentication off",
        actor=Actor(principal.user_id, principal.membership_id),
        meta=meta,
    )
    _announce_membership(session, authenticator, [principal.membership_id])


async def reset(
    session: AsyncSession,
    authenticator: Authenticator,
    user: User,
    *,
    org_id: uuid.UUID,
    reason: str,
) -> int:
    """Clear a user's two factors and end every session of theirs, in every workspace.

    `session` is in workspace `org_id` and ends there. The number of sessions ended.
    """
    _clear(user)
    await session.flush()
    sessions = await crossings.user_sessions(session, user.id)
    for workspace, ids in crossings.by_workspace(sessions).items():
        await use_workspace(session, workspace)
        await session_service.revoke(session, authenticator, ids, reason=reason)
    await use_workspace(session, org_id)
    return len(sessions)


async def reset_member(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    membership_id: uuid.UUID,
) -> Membership:
    """An Admin clears a member's two factors (a lost phone); they enroll again.

    Only a member of this workspace alone: a user's two factors are the user's, and
    also protect their other workspaces, which this Admin does not govern (else the
    Admin of any workspace of theirs, knowing the password, could strip the second
    factor guarding the others). The user's row is locked before the check, as joining
    a workspace locks it (`members.accept_invitation`): a reset and a join run one after
    the other, and the reset sees the new membership or the join sees the reset.
    """
    principal.require(Permission.MANAGE_SECURITY, "Only an Admin can reset two factors")
    target = await session.get(Membership, membership_id)
    if target is None:
        raise NotFound("Member not found")
    if target.id == principal.membership_id:
        raise BadUserInput("Use disableTwoFactor for your own two factors")
    user = await _user(session, target.user_id, lock=True)
    workspaces = await crossings.user_workspaces(session, user.id)
    if any(workspace.org_id != principal.org_id for workspace in workspaces):
        raise Forbidden(OTHER_WORKSPACES)
    ended = await reset(
        session, authenticator, user, org_id=principal.org_id, reason="two_factor_reset"
    )
    await record_security_event(
        session,
        authenticator.broker,
        SecurityKind.MFA_DISABLED,
        "An Admin reset a member's two-factor authentication",
        actor=Actor(user.id, target.id),
        meta=meta,
        details={"by_member_id": str(principal.membership_id), "sessions_ended": ended},
    )
    await record(
        session,
        Action.TWO_FACTOR_RESET,
        actor=principal,
        target_type="Member",
        target_id=target.id,
        meta=meta,
        severity=Severity.HIGH,
        details={"user": str(user.id), "sessions_ended": ended},
    )
    return target


async def update_security(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    require_two_factor: bool,
) -> Organization:
    """An Admin requires (or stops requiring) two factors of every member."""
    principal.require(Permission.MANAGE_SECURITY, "Only an Admin can change this")
    organization = await session.get(Organization, principal.org_id)
    if organization is None:
        raise NotFound("Workspace not found")
    if organization.require_two_factor != require_two_factor:
        organization.require_two_factor = require_two_factor
        await session.flush()
        await record(
            session,
            Action.ORGANIZATION_SECURITY_UPDATED,
            actor=principal,
            target_type="Organization",
            target_id=organization.id,
            meta=meta,
            severity=Severity.WARNING,
            details={"require_two_factor": require_two_factor},
        )
        members = list((await session.exec(select(Membership.id))).all())
        _announce_membership(session, authenticator, members)
    return organization


# --- the login's second step ---------------------------------------------------------


async def challenge(session: AsyncSession, codec: TokenCodec, user: User, org_id: uuid.UUID) -> str:
    """The mfaToken of a right password: bound to the user, the workspace and this step.

    Only the token of the user's latest password step is valid; using it spends it.
    """
    token = codec.issue("mfa", user_id=user.id, org_id=org_id, session_id=new_id()).token
    user.mfa_challenge_hash = token_hash(token)
    await session.flush()
    return token


async def complete_login(
    db: Database,
    codec: TokenCodec,
    guard: PasswordGuard,
    keyring: KeyRing,
    meta: RequestMeta,
    *,
    mfa_token: str,
    code: str | None,
    recovery_code: str | None,
    detectors: Detectors | None = None,
) -> TokenPair:
    """`POST /auth/mfa`: a right code with a live mfaToken opens the session.

    With `detectors`, a wrong code counts as a failed login and a login from a new
    device raises `auth.new_device`, as after a password alone."""
    try:
        claims = codec.verify(mfa_token, "mfa")
    except InvalidTokenError:
        raise Unauthenticated(INVALID_MFA_TOKEN) from None
    presented = token_hash(mfa_token)
    async with db.session(claims.org_id) as session:
        user = await session.get(User, claims.user_id)
    if user is None or not enabled(user) or user.mfa_challenge_hash != presented:
        raise Unauthenticated(INVALID_MFA_TOKEN)
    opened: list[TokenPair] = []

    async def verify() -> bool:
        async with db.session(claims.org_id) as session:
            fresh = await _user(session, claims.user_id)
            if code is not None:
                valid = await _consume_totp(session, keyring, fresh, code)
            else:
                assert recovery_code is not None
                valid = await _consume_recovery_code(session, keyring, fresh, recovery_code)
            if not valid:
                return False
            spent = await session.exec(
                update(User)
                .where(col(User.id) == fresh.id, col(User.mfa_challenge_hash) == presented)
                .values(mfa_challenge_hash=None)
            )
            if not spent.rowcount:
                raise Unauthenticated(INVALID_MFA_TOKEN)  # used meanwhile: roll back
            pair = await _open(session, codec, fresh, claims.org_id, meta, code is None)
            if detectors is not None:
                await detectors.login_succeeded(
                    session, meta, user_id=fresh.id, membership_id=pair.membership.id
                )
            opened.append(pair)
        return True

    if not await guard.check_code(email=user.email, ip=meta.ip, verify=verify):
        async with db.session(claims.org_id) as session:
            await record(
                session,
                Action.MFA_FAILED,
                actor_user_id=user.id,
                target_type="User",
                target_id=user.id,
                meta=meta,
                severity=Severity.WARNING,
            )
        if detectors is not None:
            await detectors.login_failed(
                db, meta, email=user.email, user_id=user.id, workspaces=[claims.org_id]
            )
        raise InvalidMfaCode(WRONG_CODE)
    return opened[0]


async def _open(
    session: AsyncSession,
    codec: TokenCodec,
    user: User,
    org_id: uuid.UUID,
    meta: RequestMeta,
    with_recovery_code: bool,
) -> TokenPair:
    membership = (
        await session.exec(select(Membership).where(Membership.user_id == user.id))
    ).first()
    organization = await session.get(Organization, org_id)
    if membership is None or organization is None:
        raise Unauthenticated(INVALID_MFA_TOKEN)
    pair = await session_service.open_session(
        session,
        codec,
        membership=membership,
        organization=organization,
        meta=meta,
        authenticated=True,
    )
    factor = "recovery_code" if with_recovery_code else "totp"
    await record(
        session,
        Action.LOGIN_SUCCEEDED,
        actor_user_id=user.id,
        actor_membership_id=membership.id,
        target_type="Session",
        target_id=pair.session_id,
        meta=meta,
        details={"second_factor": factor},
    )
    if with_recovery_code:
        # The consuming UPDATE synchronised `user`: what it holds is what is left.
        left = len((user.recovery_code_hashes or "").split())
        await record(
            session,
            Action.RECOVERY_CODE_USED,
            actor_user_id=user.id,
            actor_membership_id=membership.id,
            target_type="User",
            target_id=user.id,
            meta=meta,
            severity=Severity.WARNING,
            details={"remaining": left},
        )
    workspaces = await crossings.user_workspaces(session, user.id)
    return session_service.listing_workspaces(pair, workspaces)


# --- re-authentication ---------------------------------------------------------------


async def reauthenticate(
    db: Database,
    guard: PasswordGuard,
    keyring: KeyRing,
    principal: Principal,
    meta: RequestMeta,
    *,
    password: str,
    code: str | None,
) -> None:
    """`POST /auth/reauthenticate`: the password (and a code) renew this session's proof."""
    async with db.session(principal.org_id) as session:
        user = await _user(session, principal.user_id)
    if not await guard.check(
        email=user.email, ip=meta.ip, password=password, password_hash=user.password_hash
    ):
        raise InvalidCredentials("The password is wrong")
    async with db.session(principal.org_id) as session:
        if enabled(user):
            if not code:
                raise BadUserInput(
                    "A code from the authenticator app is required",
                    details=[{"field": "code", "message": "required with two factors on"}],
                )
            await check_totp(session, guard, keyring, user, meta.ip, code)
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.id) == principal.session_id)
            .values(authenticated_at=utcnow())
        )
        await record(
            session,
            Action.REAUTHENTICATED,
            actor=principal,
            target_type="Session",
            target_id=principal.session_id,
            meta=meta,
        )


async def require_recent_authentication(
    session: AsyncSession, principal: Principal, window: timedelta
) -> None:
    """REAUTHENTICATION_REQUIRED unless the session authenticated within `window`
    (UNAUTHENTICATED when it ended meanwhile, e.g. its member was just removed)."""
    row = await session.get(AuthSession, principal.session_id)
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("Authentication required")
    moment = row.authenticated_at
    if moment is None or utcnow() - moment > window:
        raise ReauthenticationRequired(
            "This operation needs a recent authentication: POST /auth/reauthenticate"
        )


# --- the operator's reset ------------------------------------------------------------

OPERATOR_SCOPE = "two-factor reset by the operator"


@dataclass(frozen=True)
class OperatorReset:
    user_id: uuid.UUID
    workspaces: int
    sessions_ended: int
    # For the servers to forget (`publish_revocation`): the command runs outside them.
    session_ids: tuple[uuid.UUID, ...] = ()
    membership_ids: tuple[uuid.UUID, ...] = ()


async def operator_reset(db: Database, *, email: str, reason: str) -> OperatorReset | None:
    """`weflux two-factor reset`: the last Admin's lost phone, without a database edit.

    On a maintenance handle (it crosses workspaces): clears the user's two factors, ends
    every session of theirs and records the reset, with the reason, in every workspace
    of theirs. None: no such user. The email is matched exactly in its normal form (any
    case): never as a pattern, where `_` or `%` would match another person's address.
    The caller announces the ended sessions to the servers (`OperatorReset.session_ids`).
    """
    async with db.session(all_workspaces=OPERATOR_SCOPE) as session:
        user = (
            await session.exec(
                select(User)
                .where(func.lower(User.email) == normalize_email(email))
                .with_for_update()
            )
        ).first()
        if user is None:
            return None
        _clear(user)
        now = utcnow()
        ended = (
            (
                await session.exec(
                    update(AuthSession)
                    .where(
                        col(AuthSession.user_id) == user.id, col(AuthSession.revoked_at).is_(None)
                    )
                    .values(revoked_at=now, revoked_reason="two_factor_reset")
                    .returning(col(AuthSession.id))
                )
            )
            .scalars()
            .all()
        )
        memberships = (
            await session.exec(select(Membership).where(Membership.user_id == user.id))
        ).all()
        for membership in memberships:
            # A security event joins this record once security events exist.
            await record(
                session,
                Action.TWO_FACTOR_RESET,
                org_id=membership.org_id,
                target_type="Member",
                target_id=membership.id,
                severity=Severity.HIGH,
                details={
                    "user": str(user.id),
                    "by": "operator",
                    "reason": reason[:500],
                    "sessions_ended": len(ended),
                },
            )
    return OperatorReset(
        user.id,
        len(memberships),
        len(ended),
        session_ids=tuple(ended),
        membership_ids=tuple(m.id for m in memberships),
    )
