"""Security events: their types, the `securityEvents` list, acknowledgement."""
