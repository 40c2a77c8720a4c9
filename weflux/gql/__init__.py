"""The GraphQL layer (Strawberry).

Named `gql`, not `graphql`: a package called `graphql` would shadow graphql-core,
which Strawberry imports, and break the server.
"""
