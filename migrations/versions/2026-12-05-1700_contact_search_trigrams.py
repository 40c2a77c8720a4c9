"""contact search by trigrams on PostgreSQL: a rare term reads its matches, not the workspace

Revision ID: 0025_contact_search_trigrams
Revises: 0024_media_file_sender
Create Date: 2026-12-05 17:00:00 UTC

`conversations(search:)` and `contacts(search:)` match `ILIKE '%term%'` (with an escape
character) on a contact's name, profile name, phone number and WhatsApp id
(weflux.services.conversations.contact_matches). No B-tree serves a pattern with a
leading wildcard: PostgreSQL read every contact of the workspace for each page.

A GiST index of each column's trigrams (pg_trgm), after `org_id` (btree_gist), finds a
workspace's rows whose trigrams the pattern's contain. GiST rather than GIN: a GiST
index scan returns rows as it finds them, so a probe limited to a few hundred matches
stops there for a common term, where a GIN scan builds the bitmap of every match first.
The GiST scans are the function's own plain index scans (below).

Row-level security keeps the app's own statements from using them: a condition of the
query may be an index condition under a policy only if its operator is LEAKPROOF, and
`~~*` (ILIKE) is not (its planner estimates are the defaults there too). So the index is
read by one SECURITY DEFINER function of the schema owner, `weflux_matching_contacts`,
which answers ids of the transaction's own workspace (`app.org_id`, as the tenant policy
reads it) matching the pattern, at most `batch`; the app's scoped statement then reads
the page among those ids and tests the pattern again (weflux.auth.crossings). It sees
nothing the app's role does not: the same workspace, ids only.

pg_trgm and btree_gist are trusted extensions (PostgreSQL 13+): the database's owner,
which runs the migrations, may create them without being a superuser
(docs/operations/README.md). The downgrade drops the function and the indexes and leaves
the extensions: other objects may use them, and they cost nothing unused.

SQLite: unchanged (docs/operations/performance.md says why).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025_contact_search_trigrams"
down_revision: str | None = "0024_media_file_sender"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "contacts"
# The columns weflux.models.inbox.SEARCHED_CONTACT_COLUMNS names, as this revision has them.
COLUMNS = ("name", "profile_name", "phone_number", "wa_id")
EXTENSIONS = ("pg_trgm", "btree_gist")
# Signatures of 64 bytes, not the default 12: an inner page's signature is the union of
# its children's trigrams, and 96 bits saturate, so a scan pruned little (a term matching
# nothing read 1,200 pages of 200,000 names; with 64 bytes, 49, at the same index size).
OPERATOR_CLASS = "gist_trgm_ops(siglen=64)"
FUNCTION = "weflux_matching_contacts(pattern text, digits text, batch integer)"
SIGNATURE = "weflux_matching_contacts(text, text, integer)"
# A plain index scan, never a bitmap: a bitmap holds every match before the first row,
# a plain GiST scan stops at the limit (the app's role cannot see the statistics that
# would tell the planner so).
_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp SET enable_bitmapscan = off"
# Each column apart, each walking its own index, all together stopping at `batch` rows:
# a contact found by two columns is answered twice (the caller drops repeats), so a
# common term costs one column's `batch` rows. The workspace is the transaction's, as
# the tenant policy reads it.
BODY = """
SELECT m.id FROM (
  (SELECT c.id FROM contacts c WHERE c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid
     AND c.name ILIKE $1 ESCAPE '/' LIMIT least(greatest($3, 0), 10000))
  UNION ALL
  (SELECT c.id FROM contacts c WHERE c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid
     AND c.profile_name ILIKE $1 ESCAPE '/' LIMIT least(greatest($3, 0), 10000))
  UNION ALL
  (SELECT c.id FROM contacts c WHERE c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid
     AND c.phone_number ILIKE $1 ESCAPE '/' LIMIT least(greatest($3, 0), 10000))
  UNION ALL
  (SELECT c.id FROM contacts c WHERE c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid
     AND c.wa_id ILIKE $1 ESCAPE '/' LIMIT least(greatest($3, 0), 10000))
  UNION ALL
  (SELECT c.id FROM contacts c WHERE c.org_id = NULLIF(current_setting('app.org_id', true), '')::uuid
     AND c.wa_id LIKE $2 ESCAPE '/' LIMIT least(greatest($3, 0), 10000))
) m LIMIT least(greatest($3, 0), 10000)"""


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    for extension in EXTENSIONS:
        op.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
    for column in COLUMNS:
        op.create_index(
            f"ix_contacts_{column}_trigrams",
            TABLE,
            ["org_id", column],
            postgresql_using="gist",
            postgresql_ops={column: OPERATOR_CLASS},
        )
    op.execute(
        f"CREATE OR REPLACE FUNCTION {FUNCTION} RETURNS SETOF uuid "
        f"LANGUAGE sql STABLE {_DEFINER} AS $fn$ {BODY} $fn$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def downgrade() -> None:
    if not _postgresql():
        return
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    for column in COLUMNS:
        op.drop_index(f"ix_contacts_{column}_trigrams", table_name=TABLE)
