"""DataLoaders, fresh per request: related rows in one query per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import SQLModel, col, select
from strawberry.dataloader import DataLoader

from weflux.models import Membership, Organization, User

if TYPE_CHECKING:
    from weflux.gql.context import Context


class Loaders:
    def __init__(self, context: Context) -> None:
        self._context = context
        self.user = DataLoader[uuid.UUID, User | None](load_fn=self._users)
        self.organization = DataLoader[uuid.UUID, Organization | None](load_fn=self._orgs)
        self.membership = DataLoader[uuid.UUID, Membership | None](load_fn=self._memberships)

    async def _by_id(self, model: type[Any], ids: Sequence[uuid.UUID]) -> list[Any]:
        rows: Sequence[SQLModel] = (
            await self._context.unit.exec(select(model).where(col(model.id).in_(ids)))
        ).all()
        found = {row.id: row for row in rows}  # type: ignore[attr-defined]
        return [found.get(i) for i in ids]

    async def _users(self, ids: Sequence[uuid.UUID]) -> list[User | None]:
        return await self._by_id(User, ids)

    async def _orgs(self, ids: Sequence[uuid.UUID]) -> list[Organization | None]:
        return await self._by_id(Organization, ids)

    async def _memberships(self, ids: Sequence[uuid.UUID]) -> list[Membership | None]:
        return await self._by_id(Membership, ids)
