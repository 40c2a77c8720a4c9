"""A demo workspace for first runs: an Admin, a Manager and an Agent."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select

from weflux.auth.passwords import hash_password
from weflux.auth.scoping import use_workspace
from weflux.db import Database
from weflux.models import Membership, Organization, Role, User

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
    async with db.session(all_workspaces="demo: is this a fresh database?") as session:
        count = (await session.exec(select(func.count()).select_from(Organization))).one()
    return int(count) == 0


async def create_demo(db: Database) -> list[DemoLogin] | None:
    """Create the demo workspace; None when it exists already."""
    admin_email = f"admin@{DEMO_DOMAIN}"
    async with db.session() as session:
        exists = (await session.exec(select(User.id).where(User.email == admin_email))).first()
        if exists is not None:
            return None
        organization = Organization(name=DEMO_WORKSPACE)
        await use_workspace(session, organization.id)
        session.add(organization)
        await session.flush()
        logins: list[DemoLogin] = []
        for role in (Role.ADMIN, Role.MANAGER, Role.AGENT):
            login = DemoLogin(role, f"{role.value.lower()}@{DEMO_DOMAIN}", _password())
            user = User(
                email=login.email,
                name=f"Demo {role.value.title()}",
                password_hash=await hash_password(login.password),
            )
            session.add(user)
            await session.flush()
            session.add(Membership(user_id=user.id, role=role))
            logins.append(login)
    return logins


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
