"""A demo workspace for first runs: an Admin, a Manager and an Agent."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.passwords import hash_password
from weflux.auth.scoping import use_workspace
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import (
    AccountStatus,
    Contact,
    Conversation,
    Membership,
    Message,
    MessageDirection,
    MessageStatus,
    Organization,
    QualityRating,
    Role,
    User,
    WhatsAppAccount,
    utcnow,
)

DEMO_WORKSPACE = "Demo Workspace"
DEMO_DOMAIN = "demo.weflux.test"
LOGINS_FILE = "demo-logins.txt"


@dataclass(frozen=True)
class DemoLogin:
    role: Role
    email: str
    password: str


def _password() -> str:
    # Four random words' worth of entropy, readable enough to type.
    return "-".join(secrets.token_urlsafe(6) for _ in range(3))


async def database_is_empty(db: Database) -> bool:
    """Whether no workspace exists yet (`db`: a maintenance handle, as it looks at all)."""
    async with db.session(all_workspaces="demo: is this a fresh database?") as session:
        count = (await session.exec(select(func.count()).select_from(Organization))).one()
    return int(count) == 0


async def create_demo(db: Database, keyring: KeyRing) -> list[DemoLogin] | None:
    """Create the demo workspace, its channel and two conversations; None when it exists."""
    admin_email = f"admin@{DEMO_DOMAIN}"
    async with db.session() as session:
        if await crossings.account_by_email(session, admin_email) is not None:
            return None
        organization = Organization(name=DEMO_WORKSPACE)
        await use_workspace(session, organization.id)
        session.add(organization)
        await session.flush()
        logins: list[DemoLogin] = []
        members: dict[Role, Membership] = {}
        for role in (Role.ADMIN, Role.MANAGER, Role.AGENT):
            login = DemoLogin(role, f"{role.value.lower()}@{DEMO_DOMAIN}", _password())
            user = User(
                email=login.email,
                name=f"Demo {role.value.title()}",
                password_hash=await hash_password(login.password),
            )
            session.add(user)
            await session.flush()
            membership = Membership(user_id=user.id, role=role)
            session.add(membership)
            await session.flush()
            members[role] = membership
            logins.append(login)
        await _demo_inbox(session, keyring, organization, members[Role.AGENT])
    return logins


async def _demo_inbox(
    session: AsyncSession, keyring: KeyRing, organization: Organization, agent: Membership
) -> None:
    """A demo number (its secrets are random: it reaches nobody) and two conversations."""
    account = WhatsAppAccount(
        org_id=organization.id,
        display_phone_number="+1 555 0100",
        phone_number_id=f"9{secrets.randbelow(10**14):014d}",
        business_account_id=f"8{secrets.randbelow(10**14):014d}",
        webhook_key=secrets.token_urlsafe(24),
        credentials_updated_at=utcnow(),
        verified_name="Weflux Demo",
        quality_rating=QualityRating.GREEN,
        messaging_limit_tier="TIER_250",
        status=AccountStatus.CONNECTED,
        status_detail="demo number: a sandbox channel, answered on this machine, never by Meta",
        sandbox=True,
    )
    for column in ("access_token_enc", "app_secret_enc", "webhook_verify_token_enc"):
        seal(keyring, account, column, secrets.token_urlsafe(32))
    session.add(account)
    now = utcnow()
    for n, (name, wa_id, text, assignee) in enumerate(
        (
            ("Ada Lovelace", "15550000001", "Hi! Where is my order #1042?", None),
            ("Grace Hopper", "15550000002", "Can I change my delivery address?", agent.id),
        )
    ):
        contact = Contact(
            org_id=organization.id,
            name=name,
            profile_name=name,  # as if from the customer's WhatsApp profile
            wa_id=wa_id,
            phone_number=f"+{wa_id}",
        )
        session.add(contact)
        await session.flush()
        sent_at = now - timedelta(minutes=10 * (n + 1))
        conversation = Conversation(
            org_id=organization.id,
            contact_id=contact.id,
            account_id=account.id,
            assignee_membership_id=assignee,
            unread_count=1,
            last_message_at=sent_at,
            last_inbound_at=sent_at,
        )
        session.add(conversation)
        await session.flush()
        message = Message(
            org_id=organization.id,
            conversation_id=conversation.id,
            direction=MessageDirection.INBOUND,
            type="text",
            text=text,
            status=MessageStatus.RECEIVED,
            wa_message_id=f"wamid.demo{secrets.token_hex(12)}",
            created_at=sent_at,
        )
        session.add(message)
        await session.flush()
        conversation.last_message_id = message.id


def write_logins(var_dir: Path, logins: list[DemoLogin]) -> Path:
    """Keep the logins beside the development database (mode 0600), for later."""
    path = var_dir / LOGINS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(format_logins(logins) + "\n")
    return path


def format_logins(logins: list[DemoLogin]) -> str:
    lines = [f"Demo workspace '{DEMO_WORKSPACE}' (POST /auth/login with these):"]
    lines += [f"  {login.role.value:<8} {login.email:<28} {login.password}" for login in logins]
    return "\n".join(lines)
