"""The incident register as the affected workspaces' Admins see it."""
