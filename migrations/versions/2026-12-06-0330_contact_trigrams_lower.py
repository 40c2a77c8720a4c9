"""contact search's trigram indexes on lower(column): a contact found by one value reads its
B-tree, not a trigram index

Revision ID: 0033_contact_trigrams_lower
Revises: 0032_label_inbox_status_assignee
Create Date: 2026-12-06 03:30:00 UTC

Migration 0025 built a GiST index of the trigrams of each searched column (name, profile
name, phone number, WhatsApp id) after `org_id`. pg_trgm's operator class serves `=` as
well as LIKE and ILIKE (`=` is LEAKPROOF, so row-level security lets the app's own
statements use it), and the planner costs its probe a little below the unique B-tree's:
every lookup of a contact by its value took the trigram index. A GiST probe for one
value walks every page whose signature its trigrams might match, and WhatsApp ids are
digits, whose trigrams every contact shares: at 250,000 contacts a new sender's lookup
read 2,550 pages in 25 to 47 ms through `ix_contacts_wa_id_trigrams`, against 3 pages and
0.03 ms through `uq_contacts_org_id_wa_id` (2026-12-06, PostgreSQL 15).

The indexes are rebuilt on `lower(column)`, an expression no lookup by value names, and
the search function `weflux_matching_contacts` matches `lower(column) LIKE lower(pattern)`:
PostgreSQL's ILIKE in a multi-byte encoding is exactly that (both sides lowered, then
LIKE), and the caller tests the pattern again on the rows it reads, as before. pg_trgm
lowers trigrams itself, so the indexes hold the same trigrams as before.

SQLite: unchanged (it has no trigram indexes).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0033_contact_trigrams_lower"
down_revision: str | None = "0032_label_inbox_status_assignee"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "contacts"
COLUMNS = ("name", "profile_name", "phone_number", "wa_id")
OPERATOR_CLASS = "gist_trgm_ops(siglen=64)"
FUNCTION = "weflux_matching_contacts(pattern text, digits text, batch integer)"
SIGNATURE = "weflux_matching_contacts(text, text, integer)"
# As migration 0025: a plain index scan, never a bitmap (a plain GiST scan stops at the
# limit).
_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp SET enable_bitmapscan = off"
_LIMIT = "LIMIT least(greatest($3, 0), 10000)"
_WORKSPACE = "c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid"


def _body(pattern: str, digits: str) -> str:
    """The search function's body: each column apart, each walking its own index, all
    together stopping at `batch` rows (as migration 0025). `pattern` and `digits` format
    a column into its condition."""
    arms = [pattern.format(column=column) for column in COLUMNS]
    arms.append(digits.format(column="wa_id"))
    selects = "\n  UNION ALL\n  ".join(
        f"(SELECT c.id FROM contacts c WHERE {_WORKSPACE}\n     AND {arm} {_LIMIT})"  # noqa: S608
        for arm in arms
    )
    return f"\nSELECT m.id FROM (\n  {selects}\n) m {_LIMIT}"


NEW_BODY = _body(
    "lower(c.{column}) LIKE lower($1) ESCAPE '/'", "lower(c.{column}) LIKE $2 ESCAPE '/'"
)
OLD_BODY = _body("c.{column} ILIKE $1 ESCAPE '/'", "c.{column} LIKE $2 ESCAPE '/'")


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _function(body: str) -> None:
    op.execute(
        f"CREATE OR REPLACE FUNCTION {FUNCTION} RETURNS SETOF uuid "
        f"LANGUAGE sql STABLE {_DEFINER} AS $fn$ {body} $fn$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def upgrade() -> None:
    if not _postgresql():
        return
    for column in COLUMNS:
        name = f"ix_contacts_{column}_trigrams"
        op.execute(f"DROP INDEX {name}")
        op.execute(
            f"CREATE INDEX {name} ON {TABLE} USING gist (org_id, lower({column}) {OPERATOR_CLASS})"
        )
    _function(NEW_BODY)


def downgrade() -> None:
    if not _postgresql():
        return
    for column in COLUMNS:
        name = f"ix_contacts_{column}_trigrams"
        op.execute(f"DROP INDEX {name}")
        op.execute(f"CREATE INDEX {name} ON {TABLE} USING gist (org_id, {column} {OPERATOR_CLASS})")
    _function(OLD_BODY)
