"""Rate limits and pacing: named request limits, GraphQL cost budgets, sends per number."""
