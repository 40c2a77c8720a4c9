"""Fixtures of the inbox tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from tests.fixtures.factories import Actor, create_actor, create_whatsapp_account
from tests.inbox.helpers import Api
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Organization, Role, WhatsAppAccount


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[Starlette]:
    """The app itself, its lifespan running: `web.state` holds its broker and database."""
    from weflux.app import create_app

    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def api(web: Starlette) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=web, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client)


@pytest.fixture
async def account(db: Database, org: Organization) -> WhatsAppAccount:
    async with db.session(org.id) as session:
        return await create_whatsapp_account(session)


@pytest.fixture
async def other_account(db: Database, other_org: Organization) -> WhatsAppAccount:
    async with db.session(other_org.id) as session:
        return await create_whatsapp_account(session)


@pytest.fixture
async def other_agent(db: Database, org: Organization) -> Actor:
    """A second Agent of the same workspace."""
    async with db.session(org.id) as session:
        return await create_actor(session, Role.AGENT, email="agent2@acme.example")


@pytest.fixture
async def other_org_agent(db: Database, other_org: Organization) -> Actor:
    async with db.session(other_org.id) as session:
        return await create_actor(session, Role.AGENT, email="agent@globex.example")
