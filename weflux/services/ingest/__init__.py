"""Processing stored webhook events: contacts, conversations, messages, statuses, health.

One transaction per event whatever its size, in a session that names the event
(`db.session(webhook_event=…)`: on PostgreSQL a transaction sees only the webhook event
it names). Routing by `phone_number_id` (messages, statuses) or WABA id (management
fields) is the one thing here that crosses workspaces: it asks
`crossings.webhook_routes` for the live numbers concerned, ids only. Each workspace's
share of the event is then written with the session narrowed to that workspace
(`use_workspace`), so the scoping layer and row-level security apply as everywhere
else. Reads and writes are batched: the number of SQL statements does not grow with
the number of messages in the event.

Idempotent: a redelivered message (same wamid) or status is a no-op; statuses only
move forward. Anything the parser does not understand stays in `webhook_events`.
A failure is recorded on the event and retried by `weflux.services.webhook_queue`.
"""

from weflux.services.ingest.process import (
    Batch,
    ReceivedEvent,
    concerned_workspaces,
    process_batch,
    process_event,
    received_copy,
    store_and_process,
)

__all__ = [
    "Batch",
    "ReceivedEvent",
    "concerned_workspaces",
    "process_batch",
    "process_event",
    "received_copy",
    "store_and_process",
]
