"""The GraphQL cost budgets: each operation's points come out of two leaky buckets.

Imports no GraphQL library (graphql-core, Strawberry): the runtime builds the budgets in
every process, `weflux worker` too, which never runs an operation and need not load them
(its start-up time; tests/test_imports.py). What an operation costs is `weflux.gql.cost`;
where the points are charged, `weflux.gql.guard`.
"""

from __future__ import annotations

from weflux.auth.principal import Principal
from weflux.config import ConfigError, Settings
from weflux.throttle.leaky_bucket import Bucket, Charge, LeakyBuckets, parse_bucket

QUERY_POINTS = 1
MUTATION_POINTS = 10

WORKSPACE_BUDGET = "WEFLUX_RATE_LIMIT_GRAPHQL_COST_WORKSPACE"
MEMBER_BUDGET = "WEFLUX_RATE_LIMIT_GRAPHQL_COST_MEMBER"


class CostBudgets:
    """Each operation's points come out of its workspace's bucket and its member's."""

    def __init__(self, settings: Settings) -> None:
        self.workspace = parse_bucket(WORKSPACE_BUDGET, settings.rate_limit_graphql_cost_workspace)
        self.member = parse_bucket(MEMBER_BUDGET, settings.rate_limit_graphql_cost_member)
        most = settings.graphql_max_nodes + MUTATION_POINTS
        for variable, spec in ((WORKSPACE_BUDGET, self.workspace), (MEMBER_BUDGET, self.member)):
            if spec.capacity < most:
                raise ConfigError(
                    f"{variable}: a capacity of {spec.capacity} is less than the most one "
                    f"operation may cost ({most}: WEFLUX_GRAPHQL_MAX_NODES + {MUTATION_POINTS})"
                )
        self.buckets = LeakyBuckets(settings.redis_url)

    async def charge(self, principal: Principal, points: int) -> Charge:
        """Take `points` from both buckets, or from neither (0 points: just look)."""
        return await self.buckets.charge(
            [
                Bucket(f"workspace:{principal.org_id}", self.workspace),
                Bucket(f"member:{principal.membership_id}", self.member),
            ],
            points,
        )

    async def close(self) -> None:
        await self.buckets.close()
