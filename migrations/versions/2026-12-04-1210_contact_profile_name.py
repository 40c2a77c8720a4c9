"""contact profile name

Revision ID: 0006_contact_profile_name
Revises: 0005_credentials
Create Date: 2026-12-04 12:10:00 UTC

`contacts.profile_name` keeps the latest WhatsApp profile name beside `name`, and
`name_set_by_team` says whether `name` is the team's (then no profile name replaces it).
Existing names cannot tell who set them, so every existing name counts as the team's:
no name a team may have chosen is overwritten; the profile name arrives with the
contact's next message, and clearing the name in the app lets it show.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_contact_profile_name"
down_revision: str | None = "0005_credentials"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("profile_name", sa.String(length=256), nullable=True))
        batch_op.add_column(
            sa.Column("name_set_by_team", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Row-level security is FORCEd on the table, for its owner too: lift it for this
        # one statement inside the migration's transaction (the DDL lock keeps every
        # other session out until it is back).
        op.execute("ALTER TABLE contacts NO FORCE ROW LEVEL SECURITY")
    op.execute(sa.text("UPDATE contacts SET name_set_by_team = true WHERE name IS NOT NULL"))
    if postgres:
        op.execute("ALTER TABLE contacts FORCE ROW LEVEL SECURITY")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.alter_column("name_set_by_team", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("name_set_by_team")
        batch_op.drop_column("profile_name")
