"""The shared inbox in GraphQL: contacts, conversations, messages."""
