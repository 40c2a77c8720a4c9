"""GraphQL types of the data lifecycle: data requests and the retention policy."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.gql.context import Context
from weflux.gql.identity.types import Member, RetentionPolicy, to_member, to_retention_policy
from weflux.gql.types import Connection, Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.lifecycle import exports
from weflux.models import DataRequestKind, DataRequestStatus, utcnow

graphql_enum(
    DataRequestKind,
    description="What a data request does.",
    values={
        DataRequestKind.CONTACT_ERASURE: "Erase a contact and everything of it.",
        DataRequestKind.WORKSPACE_DELETION: "Delete the whole workspace after a grace period.",
        DataRequestKind.CONTACT_EXPORT: "Export a contact's data (a subject access request).",
        DataRequestKind.WORKSPACE_EXPORT: "Export the whole workspace.",
    },
)
graphql_enum(
    DataRequestStatus,
    description="Where a data request stands.",
    values={
        DataRequestStatus.PENDING: "Waiting for the worker (or for the grace period to end).",
        DataRequestStatus.RUNNING: "The worker is on it; see `progress`.",
        DataRequestStatus.COMPLETED: "Done.",
        DataRequestStatus.CANCELLED: "Cancelled by an Admin (workspace deletion only).",
        DataRequestStatus.FAILED: "Given up; the audit trail and logs say why.",
    },
)


@strawberry.type(
    description="An erasure, deletion or export an Admin asked for; the worker completes it "
    "by `dueAt` (at most 30 days after the request)."
)
class DataRequest(Node):
    id: strawberry.ID = strawberry.field(description="The request's global id.")
    kind: DataRequestKind = strawberry.field(description="What it does.")
    status: DataRequestStatus = strawberry.field(description="Where it stands.")
    requested_at: datetime = strawberry.field(description="When it was asked for.")
    due_at: datetime = strawberry.field(description="When it will have been completed, at latest.")
    completed_at: datetime | None = strawberry.field(description="When it was completed.")
    progress: float | None = strawberry.field(description="How far the worker is, 0 to 1.")
    download_path: str | None = strawberry.field(
        description="Exports: `/exports/{id}` once COMPLETED, until `expiresAt`; null "
        "before and after."
    )
    expires_at: datetime | None = strawberry.field(
        description="Exports: when the file is (or was) destroyed, 24 hours after it was "
        "built; at once when a contact it may hold is erased (ask again)."
    )
    requested_by_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="Who asked (null when the member is gone).")
    async def requested_by(self, info: Info[Context, None]) -> Member | None:
        if self.requested_by_membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.requested_by_membership_id)
        return to_member(row) if row is not None else None


DataRequestConnection = Connection[DataRequest]

__all__ = ["DataRequest", "RetentionPolicy", "to_data_request", "to_retention_policy"]


def to_data_request(row: models.DataRequest) -> DataRequest:
    exported = row.kind in (DataRequestKind.CONTACT_EXPORT, DataRequestKind.WORKSPACE_EXPORT)
    # Past `expiresAt` (at its time, or withdrawn by an erasure) the file answers 404 even
    # before the worker's sweep destroys it: no link to it then.
    ready = (
        exported
        and row.status == DataRequestStatus.COMPLETED
        and row.file_name
        and not exports.expired(row, utcnow())
    )
    global_id = encode_global_id("DataRequest", row.id)
    return DataRequest(
        id=strawberry.ID(global_id),
        kind=row.kind,
        status=row.status,
        requested_at=row.requested_at,
        due_at=row.due_at,
        completed_at=row.completed_at,
        progress=row.progress,
        download_path=f"/exports/{global_id}" if ready else None,
        expires_at=row.expires_at if exported else None,
        requested_by_membership_id=row.requested_by_membership_id,
    )
