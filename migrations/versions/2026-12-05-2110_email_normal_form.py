"""emails: one stored form per mailbox (Unicode NFC, the domain in ASCII, lower case)

Addresses were stored trimmed and lower-cased only, so `a@bücher.de` and
`a@xn--bcher-kva.de` (one mailbox), or an `é` typed as one character and as `e` plus an
accent, made two accounts, and a login typed one way missed an account stored the other
way. `weflux.emails.normalize_email` now gives one form; this rewrites the stored
addresses of `users`, `invitations` and `pending_signups` that are not in it (only
addresses with non-ASCII characters can differ). An account whose normal form another
account already has is left as it is (two accounts of one mailbox cannot be merged by a
migration), and its id is logged. Downgrading leaves the addresses in their normal form,
which the earlier code reads as well.

Revision ID: 0029_email_normal_form
Revises: 0028_stored_object_intents
Create Date: 2026-12-05 21:10:00 UTC
"""

import contextlib
import logging
import unicodedata
from collections.abc import Sequence

import idna
import sqlalchemy as sa
from alembic import op

revision: str = "0029_email_normal_form"
down_revision: str | None = "0028_stored_object_intents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

TABLES = ("users", "invitations", "pending_signups")


def normal_form(email: str) -> str:
    """`weflux.emails.normalize_email` as of this migration (copied: a migration must not
    change meaning when the app's code does)."""
    text = unicodedata.normalize("NFC", email.strip())
    local, at, domain = text.rpartition("@")
    if at and not domain.isascii():
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            domain = idna.encode(domain, uts46=True).decode("ascii")
    return unicodedata.normalize("NFC", f"{local}{at}{domain}".lower())


def _rewrite(table: str) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT id, email FROM {table}")).all()  # noqa: S608
    taken = {str(email).lower() for _, email in rows}
    for row_id, email in rows:
        if str(email).isascii():
            continue  # stored lower-cased and trimmed already: its normal form
        normal = normal_form(str(email))
        if normal == email:
            continue
        if table == "users" and normal in taken:
            log.warning("users %s: its address's normal form has another account; kept", row_id)
            continue
        taken.add(normal)
        bind.execute(
            sa.text(f"UPDATE {table} SET email = :email WHERE id = :id"),  # noqa: S608
            {"email": normal, "id": row_id},
        )


def _forced(table: str) -> bool:
    """Whether row-level security is FORCEd on `table` (for its owner too)."""
    if op.get_bind().dialect.name != "postgresql":
        return False
    query = sa.text("SELECT relforcerowsecurity FROM pg_class WHERE oid = CAST(:t AS regclass)")
    return bool(op.get_bind().execute(query, {"t": table}).scalar())


def upgrade() -> None:
    for table in TABLES:
        forced = _forced(table)
        if forced:
            # Lifted for these statements inside the migration's transaction (the DDL
            # lock keeps every other session out until it is back).
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        _rewrite(table)
        if forced:
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def downgrade() -> None:
    pass  # the normal form is an address the earlier code reads as well
