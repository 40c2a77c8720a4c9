"""Media files: encrypted storage, the download worker, serving (docs/inbox.md#media)."""
