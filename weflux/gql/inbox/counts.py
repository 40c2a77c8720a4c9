"""The inbox's badge counts: `inboxCounts` and `inboxCountsUpdated`.

Counted through the caller's scoped session (weflux.services.inbox_counts), live through
the process's counts feed (weflux.realtime.counts): recounted after the events that may
move a count, coalesced under bursts, shared by the subscribers who see alike, pushed only
when the caller's counts differ from what they were last given.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
from weflux.gql.context import Context
from weflux.gql.permissions import guarded
from weflux.services import inbox_counts
from weflux.services.inbox_counts import InboxTally

VISIBLE = (
    f"Conversations the caller may see (all for {who_may(Permission.SEE_ALL_CONVERSATIONS)}; "
    "for the others their own and unassigned ones) that are not RESOLVED"
)


@strawberry.type(description=f"Badge counts of the inbox. {VISIBLE}, counted four ways.")
class InboxCounts:
    mine: int = strawberry.field(description="Those assigned to the caller.")
    unassigned: int = strawberry.field(description="Those assigned to nobody.")
    all: int = strawberry.field(description="All of them (assigned to anyone or nobody).")
    unread: int = strawberry.field(description="Those with an `unreadCount` above 0.")


def to_inbox_counts(counts: inbox_counts.InboxCounts) -> InboxCounts:
    return InboxCounts(
        mine=counts.mine, unassigned=counts.unassigned, all=counts.all, unread=counts.unread
    )


@strawberry.type
class InboxCountsQuery:
    @strawberry.field(**guarded(Permission.READ_WORKSPACE, f"Badge counts. {VISIBLE}."))
    async def inbox_counts(self, info: Info[Context, None]) -> InboxCounts:
        context = info.context
        tally = await inbox_counts.tally(context.unit)
        return to_inbox_counts(tally.counts_for(context.actor.membership_id))


@strawberry.type
class InboxCountsSubscription:
    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            f"Badge counts, live. {VISIBLE}. The current counts first, then the counts each "
            "time one of them changes (never the same four twice in a row); under a burst "
            "of changes at most a few a second, the last one always the state after the "
            "burst. A role change is counted with the new role.",
        )
    )
    async def inbox_counts_updated(
        self, info: Info[Context, None]
    ) -> AsyncGenerator[InboxCounts, None]:
        context = info.context

        async def count() -> InboxTally:
            # A unit of its own per count, scoped by the caller's role of the moment.
            async with context.event_unit():
                return await inbox_counts.tally(context.unit)

        feed = context.inbox_counts
        async with feed.subscribe(context.actor.org_id, lambda: context.principal, count) as sub:
            async for counts in sub.values():
                yield to_inbox_counts(counts)
