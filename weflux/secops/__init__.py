"""Security operations: detectors, security events and their alerts, the incident register."""
