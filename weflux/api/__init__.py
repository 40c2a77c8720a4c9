"""Starlette routes that are not GraphQL, and the middleware."""
