"""Stored secrets: AES-256-GCM envelopes bound to their row (`keyring`, `fields`), the
`Secret` type that masks them (`secret`), the registry of values to scrub from text
(`redaction`), and re-encryption under the primary key (`rotation`).

Import from the modules themselves: this package stays empty so that the light ones
(`secret`, `redaction`, which the logging set-up needs) do not bring the models.
"""
