"""Authentication, authorization and tenant scoping."""
