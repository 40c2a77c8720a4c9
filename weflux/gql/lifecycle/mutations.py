"""Erasure, workspace deletion and retention (ADMIN only, audited)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.lifecycle.types import (
    DataRequest,
    RetentionPolicy,
    to_data_request,
    to_retention_policy,
)
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.lifecycle import requests as lifecycle_requests


@strawberry.input(
    description="How long to keep messages (null: keep them) and raw webhook bodies; "
    "a field omitted stays as it is."
)
class UpdateRetentionPolicyInput:
    message_retention_days: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Days to keep messages, 1 to 36,500; null keeps them; omitted: unchanged.",
    )
    webhook_payload_retention_days: int | None = strawberry.field(
        default=None, description="Days to keep raw webhook bodies after processing, 1 to 30."
    )


@strawberry.type
class LifecycleMutation:
    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Erase a contact: at once gone from every query, subscription and "
            "export; then deleted by the worker, with its raw webhook bodies. Idempotent.",
        )
    )
    async def erase_contact(
        self,
        info: Info[Context, None],
        contact_id: Annotated[strawberry.ID, strawberry.argument(description="The contact.")],
    ) -> DataRequest:
        context = info.context
        row = await lifecycle_requests.erase_contact(
            context.unit,
            context.actor,
            context.meta,
            contact_id=decode_global_id(contact_id, "Contact"),
            broker=context.broker,
        )
        return to_data_request(row)

    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Export everything about a contact, for the person it is about: "
            "the worker builds the file; download it at `downloadPath` within 24 hours.",
        )
    )
    async def export_contact_data(
        self,
        info: Info[Context, None],
        contact_id: Annotated[strawberry.ID, strawberry.argument(description="The contact.")],
    ) -> DataRequest:
        context = info.context
        row = await lifecycle_requests.export_contact_data(
            context.unit,
            context.actor,
            context.meta,
            contact_id=decode_global_id(contact_id, "Contact"),
            broker=context.broker,
        )
        return to_data_request(row)

    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Export the whole workspace: the worker builds the file; download "
            "it at `downloadPath` within 24 hours.",
        )
    )
    async def request_workspace_export(self, info: Info[Context, None]) -> DataRequest:
        context = info.context
        row = await lifecycle_requests.request_workspace_export(
            context.unit, context.actor, context.meta, broker=context.broker
        )
        return to_data_request(row)

    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Schedule the workspace's deletion, confirmed by its name: at once "
            "every session ends, non-Admins cannot log in, numbers stop sending and credentials "
            "are destroyed; during the grace period Admins may only cancel, export and keep "
            "their own account safe (every other mutation is FORBIDDEN); after it every row "
            "is deleted. Runs alone, or beside only those mutations: else BAD_USER_INPUT.",
        )
    )
    async def request_workspace_deletion(
        self,
        info: Info[Context, None],
        confirm_organization_name: Annotated[
            str, strawberry.argument(description="The workspace's name, exactly.")
        ],
    ) -> DataRequest:
        context = info.context
        row = await lifecycle_requests.request_workspace_deletion(
            context.unit,
            context.authenticator,
            context.actor,
            context.meta,
            confirm_name=confirm_organization_name,
            grace=context.settings.workspace_deletion_grace,
            broker=context.broker,
        )
        return to_data_request(row)

    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Cancel the workspace's scheduled deletion during its grace period; every "
            "mutation runs again. Numbers need new credentials to connect again.",
        )
    )
    async def cancel_workspace_deletion(self, info: Info[Context, None]) -> DataRequest:
        context = info.context
        row = await lifecycle_requests.cancel_workspace_deletion(
            context.unit, context.actor, context.meta
        )
        return to_data_request(row)

    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Set how long messages and raw webhook bodies are kept.",
        )
    )
    async def update_retention_policy(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateRetentionPolicyInput, strawberry.argument(description="The new policy.")
        ],
    ) -> RetentionPolicy:
        context = info.context
        row = await lifecycle_requests.update_retention_policy(
            context.unit,
            context.actor,
            context.meta,
            message_retention_days=(
                lifecycle_requests.UNCHANGED
                if input.message_retention_days is strawberry.UNSET
                else input.message_retention_days
            ),
            webhook_payload_retention_days=input.webhook_payload_retention_days,
        )
        return to_retention_policy(row)
