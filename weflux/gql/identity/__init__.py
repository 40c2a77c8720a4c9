"""Identity and access: viewer, workspace, members, sessions, audit."""
