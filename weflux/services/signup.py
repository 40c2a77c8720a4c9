"""Sign-up with email confirmation: nothing exists until the mailbox is proven.

1. `signup_request` checks the body's password policy (422 before anything is counted).
2. `request_signup` answers the same way whether or not the email has an account, at
   the same cost (one bcrypt hash either way), and returns the email to send:
   - a new address gets a pending sign-up (token stored hashed, password bcrypt-hashed,
     24 hours) and a confirmation link to `WEFLUX_APP_URL`; several may coexist, so a
     squatter who never confirms blocks nobody;
   - an address with an account gets no pending sign-up; its owner is told that someone
     tried to sign up with it.
3. `confirm_signup` spends the token and creates the workspace, its first Admin and a
   session; if the address got an account meanwhile, `CONFLICT`.

The emails quote nothing the requester typed (no name, no workspace name), so the form
cannot be used to send arbitrary text to a stranger's mailbox.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import delete, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.passwords import hash_password
from weflux.auth.scoping import use_workspace
from weflux.auth.tokens import TokenCodec, token_hash
from weflux.db import Database
from weflux.emails import normalize_email
from weflux.errors import Conflict, NotFound
from weflux.mail.mailer import Mailer, compose
from weflux.models import Membership, Organization, PendingSignup, Role, User, utcnow
from weflux.services import sessions as session_service
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.auth import check_new_password
from weflux.services.sessions import TokenPair

CONFIRMATION_TTL = timedelta(hours=24)
CONFIRM_SUBJECT = "Confirm your email address for Weflux"
EXISTING_SUBJECT = "Someone tried to sign up to Weflux with your email address"


@dataclass(frozen=True)
class SignupRequest:
    """A sign-up whose password meets the policy; the email is normalised."""

    organization_name: str
    name: str
    email: str
    password: str = field(repr=False)


def signup_request(
    *, organization_name: str, name: str, email: str, password: str
) -> SignupRequest:
    """Normalise the email and check the password policy (`BadUserInput` otherwise)."""
    email = normalize_email(email)
    check_new_password(password, email=email, user_inputs=[name, organization_name])
    return SignupRequest(organization_name, name, email, password)


def _confirmation(mailer: Mailer, app_url: str, to: str, token: str) -> EmailMessage:
    hours = int(CONFIRMATION_TTL.total_seconds() // 3600)
    return compose(
        mailer,
        to=to,
        subject=CONFIRM_SUBJECT,
        body=(
            "Someone, hopefully you, asked to create a Weflux workspace with this email "
            f"address. To confirm, open this link within {hours} hours:\n\n"
            f"{app_url}/signup/confirm#token={token}\n\n"
            "If it was not you, ignore this email: nothing is created until the link is "
            "opened.\n"
        ),
    )


def _already_registered(mailer: Mailer, app_url: str, to: str) -> EmailMessage:
    return compose(
        mailer,
        to=to,
        subject=EXISTING_SUBJECT,
        body=(
            "Someone asked to create a Weflux workspace with this email address, which "
            "already has a Weflux account. If it was you, log in instead:\n\n"
            f"{app_url}/login\n\n"
            "If it was not you, ignore this email: nothing has changed.\n"
        ),
    )


async def request_signup(
    db: Database, mailer: Mailer, app_url: str, meta: RequestMeta, request: SignupRequest
) -> EmailMessage:
    """Record a pending sign-up for a new address; the email to send either way."""
    password_hash = await hash_password(request.password)  # spent either way: same timing
    now = utcnow()
    async with db.session() as session:
        await session.exec(delete(PendingSignup).where(col(PendingSignup.expires_at) <= now))
        if await crossings.account_by_email(session, request.email) is not None:
            return _already_registered(mailer, app_url, request.email)
        token = secrets.token_urlsafe(32)
        session.add(
            PendingSignup(
                email=request.email,
                name=request.name,
                organization_name=request.organization_name,
                password_hash=password_hash,
                token_hash=token_hash(token),
                ip_address=meta.ip,
                expires_at=now + CONFIRMATION_TTL,
            )
        )
    return _confirmation(mailer, app_url, request.email, token)


async def confirm_signup(
    db: Database, codec: TokenCodec, meta: RequestMeta, *, token: str
) -> TokenPair:
    """Spend a confirmation token: create the workspace and its first Admin, logged in."""
    invalid = NotFound("This confirmation link is invalid, used or expired")
    pair: TokenPair | None = None
    digest = token_hash(token)
    async with db.session() as session:
        await _hold_token(session, digest)
        pending = (
            await session.exec(
                select(PendingSignup).where(
                    PendingSignup.token_hash == digest,
                    col(PendingSignup.expires_at) > utcnow(),
                )
            )
        ).first()
        if pending is None:
            raise invalid
        # Single use. The address's other pending sign-ups (if any) expire on their own;
        # confirming one of them later answers CONFLICT, the address having an account.
        spent = (
            await session.exec(delete(PendingSignup).where(col(PendingSignup.token_hash) == digest))
        ).rowcount
        if spent == 0:  # confirmed concurrently
            raise invalid
        user = User(email=pending.email, name=pending.name, password_hash=pending.password_hash)
        try:
            async with session.begin_nested():
                session.add(user)
                await session.flush()
        except IntegrityError:
            pass  # the address got an account meanwhile: the spent rows stay deleted
        else:
            pair = await _create_workspace(session, codec, meta, user, pending.organization_name)
    if pair is None:
        raise Conflict("An account with this email exists: log in instead")
    return pair


async def _hold_token(session: AsyncSession, digest: str) -> None:
    """On PostgreSQL, row-level security lets a transaction see the pending sign-up whose
    token it holds, and no other (docs/security/tenancy.md)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT set_config('app.signup_token_hash', :digest, true)"),
            {"digest": digest},
        )


async def _create_workspace(
    session: AsyncSession, codec: TokenCodec, meta: RequestMeta, user: User, organization_name: str
) -> TokenPair:
    organization = Organization(name=organization_name)
    await use_workspace(session, organization.id)
    session.add(organization)
    await session.flush()
    membership = Membership(user_id=user.id, role=Role.ADMIN)
    session.add(membership)
    await session.flush()
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
        Action.WORKSPACE_CREATED,
        actor_user_id=user.id,
        actor_membership_id=membership.id,
        target_type="Organization",
        target_id=organization.id,
        meta=meta,
    )
    return TokenPair(pair.access, pair.refresh, organization, membership, [organization])
