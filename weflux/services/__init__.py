"""Domain logic: async functions used alike by GraphQL, HTTP routes, webhooks and the worker."""
