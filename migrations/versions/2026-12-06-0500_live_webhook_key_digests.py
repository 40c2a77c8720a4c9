"""live webhook keys' digests: a process refuses an unknown webhook key without a lookup

Revision ID: 0035_live_webhook_key_digests
Revises: 0033_contact_trigrams_lower
Create Date: 2026-12-06 05:00:00 UTC

Each process keeps the digests of every live webhook key (weflux.services.live_keys) and
answers 404 to a key whose digest is absent without reading the database. Loading them
crosses workspaces: `weflux_live_webhook_key_digests()` (SECURITY DEFINER) answers one
bytea, the first 8 bytes of SHA-256 of each live number's key, concatenated. Never a key:
the app's role cannot list other workspaces' webhook URLs through it (a digest of a
random key of 24+ bytes gives none back; it only confirms a guessed key, as a post to
the URL would). docs/security/tenancy.md.

SQLite: nothing (no roles; weflux.auth.crossings reads the keys and digests them).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0035_live_webhook_key_digests"
down_revision: str | None = "0033_contact_trigrams_lower"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
SIGNATURE = "weflux_live_webhook_key_digests()"
BODY = """SELECT coalesce(string_agg(substring(sha256(convert_to(a.webhook_key, 'UTF8'))
                                           FROM 1 FOR 8), ''::bytea), ''::bytea)
   FROM whatsapp_accounts a WHERE a.disconnected_at IS NULL"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE OR REPLACE FUNCTION {SIGNATURE} RETURNS bytea "
            f"LANGUAGE sql STABLE {_DEFINER} AS $fn$ {BODY} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
