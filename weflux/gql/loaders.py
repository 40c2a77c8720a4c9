"""DataLoaders, fresh per request: related rows in one query per batch.

They read through a session getter, not a context: whichever unit of work is current
when a batch runs (the request's, or a live event's) answers it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from strawberry.dataloader import DataLoader

from weflux.auth.scoping import BY_KEY
from weflux.models import (
    Contact,
    Conversation,
    ConversationLabel,
    Label,
    MediaFile,
    Membership,
    Message,
    MessageReaction,
    Organization,
    User,
    WhatsAppAccount,
    listed_message,
)


class Loaders:
    # Annotated, not subscripted: `DataLoader[K, V](...)` builds the generic alias (and
    # sets `__orig_class__`) on every call, about 20 us of the 25 a set of loaders cost,
    # once per request and per live event.
    def __init__(self, unit: Callable[[], AsyncSession]) -> None:
        self._unit = unit
        self.user: DataLoader[uuid.UUID, User | None] = DataLoader(load_fn=self._users)
        self.organization: DataLoader[uuid.UUID, Organization | None] = DataLoader(
            load_fn=self._orgs
        )
        self.membership: DataLoader[uuid.UUID, Membership | None] = DataLoader(
            load_fn=self._memberships
        )
        # The inbox: rows of invisible conversations (Agents) load as None.
        self.contact: DataLoader[uuid.UUID, Contact | None] = DataLoader(load_fn=self._contacts)
        self.conversation: DataLoader[uuid.UUID, Conversation | None] = DataLoader(
            load_fn=self._conversations
        )
        self.message: DataLoader[uuid.UUID, Message | None] = DataLoader(load_fn=self._messages)
        self.media_file: DataLoader[uuid.UUID, MediaFile | None] = DataLoader(
            load_fn=self._media_files
        )
        self.whatsapp_account: DataLoader[uuid.UUID, WhatsAppAccount | None] = DataLoader(
            load_fn=self._whatsapp_accounts
        )
        # By WhatsApp's message id (wamid): a reply's quoted message, a message's reactions.
        self.message_by_wamid: DataLoader[str, Message | None] = DataLoader(
            load_fn=self._messages_by_wamid
        )
        self.reactions: DataLoader[str, list[MessageReaction]] = DataLoader(load_fn=self._reactions)
        # A conversation's labels, by name: one query for a whole page of conversations.
        self.conversation_labels: DataLoader[uuid.UUID, list[Label]] = DataLoader(
            load_fn=self._conversation_labels
        )

    async def _by_id(self, model: type[Any], ids: Sequence[uuid.UUID]) -> list[Any]:
        rows: Sequence[SQLModel] = (
            await self._unit().exec(
                select(model).where(col(model.id).in_(ids)).execution_options(**{BY_KEY: True})
            )
        ).all()
        found = {row.id: row for row in rows}  # type: ignore[attr-defined]
        return [found.get(i) for i in ids]

    async def _users(self, ids: Sequence[uuid.UUID]) -> list[User | None]:
        return await self._by_id(User, ids)

    async def _orgs(self, ids: Sequence[uuid.UUID]) -> list[Organization | None]:
        return await self._by_id(Organization, ids)

    async def _memberships(self, ids: Sequence[uuid.UUID]) -> list[Membership | None]:
        return await self._by_id(Membership, ids)

    async def _contacts(self, ids: Sequence[uuid.UUID]) -> list[Contact | None]:
        return await self._by_id(Contact, ids)

    async def _conversations(self, ids: Sequence[uuid.UUID]) -> list[Conversation | None]:
        return await self._by_id(Conversation, ids)

    async def _messages(self, ids: Sequence[uuid.UUID]) -> list[Message | None]:
        return await self._by_id(Message, ids)

    async def _media_files(self, ids: Sequence[uuid.UUID]) -> list[MediaFile | None]:
        return await self._by_id(MediaFile, ids)

    async def _whatsapp_accounts(self, ids: Sequence[uuid.UUID]) -> list[WhatsAppAccount | None]:
        return await self._by_id(WhatsAppAccount, ids)

    async def _conversation_labels(self, ids: Sequence[uuid.UUID]) -> list[list[Label]]:
        rows = (
            await self._unit().exec(
                select(ConversationLabel.conversation_id, Label)
                .join(Label, col(Label.id) == col(ConversationLabel.label_id))
                .where(col(ConversationLabel.conversation_id).in_(ids))
                .order_by(col(Label.name), col(Label.id))
            )
        ).all()
        found: dict[uuid.UUID, list[Label]] = {i: [] for i in ids}
        for conversation_id, label in rows:
            found[conversation_id].append(label)
        return [found[i] for i in ids]

    async def _messages_by_wamid(self, wamids: Sequence[str]) -> list[Message | None]:
        rows = (
            await self._unit().exec(
                select(Message).where(col(Message.wa_message_id).in_(wamids), listed_message())
            )
        ).all()
        found = {row.wa_message_id: row for row in rows}
        return [found.get(wamid) for wamid in wamids]

    async def _reactions(self, wamids: Sequence[str]) -> list[list[MessageReaction]]:
        rows = (
            await self._unit().exec(
                select(MessageReaction)
                .where(
                    col(MessageReaction.target_wa_message_id).in_(wamids),
                    MessageReaction.emoji != "",  # an unreaction's marker
                )
                .order_by(col(MessageReaction.created_at), col(MessageReaction.id))
            )
        ).all()
        found: dict[str, list[MessageReaction]] = {wamid: [] for wamid in wamids}
        for row in rows:
            found[row.target_wa_message_id].append(row)
        return [found[wamid] for wamid in wamids]
