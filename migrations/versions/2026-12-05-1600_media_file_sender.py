"""media files: the contact who sent an inbound file

Revision ID: 0024_media_file_sender
Revises: 0023_inbox_order_indexes
Create Date: 2026-12-05 16:00:00 UTC

`media_files.sender_contact_id` names the contact who sent an inbound file (null for an
upload). Retention detaches a file a newer message still carries from its purged message
(`message_id` null); the sender stays, so the contact's erasure still finds and deletes
the file and its stored bytes (docs/lifecycle.md#which-files-go-when), and the scoping
layer hides it from the erasure's commit by this column.

The foreign key has no ON DELETE action: the erasure deletes the files (rows and stored
bytes) before the contact, and a cascade would drop rows while leaving their bytes in the
store. A contact deletion that finds a file still naming it fails instead.

Backfilled from the received message's conversation's contact. A file detached before
this revision has no message left to say who sent it: its sender stays null.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_media_file_sender"
down_revision: str | None = "0023_inbox_order_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_media_files_sender_contact_id"
FOREIGN_KEY = "fk_media_files_sender_contact_id_contacts"
BACKFILL = """UPDATE media_files SET sender_contact_id = (
    SELECT c.contact_id FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.id = media_files.message_id
) WHERE message_id IS NOT NULL"""


def upgrade() -> None:
    with op.batch_alter_table("media_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender_contact_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(FOREIGN_KEY, "contacts", ["sender_contact_id"], ["id"])
    op.execute(BACKFILL)
    op.create_index(INDEX, "media_files", ["sender_contact_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="media_files")
    with op.batch_alter_table("media_files", schema=None) as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_="foreignkey")
        batch_op.drop_column("sender_contact_id")
