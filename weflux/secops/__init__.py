"""Security operations: the incident register (and, beside it, detectors and alerts)."""
