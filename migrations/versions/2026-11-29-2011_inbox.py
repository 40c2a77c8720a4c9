"""inbox

Revision ID: 0004_inbox
Revises: 0003_channels
Create Date: 2026-11-29 20:11:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0004_inbox"
down_revision: str | None = "0003_channels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


WORKSPACE_TABLES = ("contacts", "conversations", "messages", "template_status_events")


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "PROCESSED",
                "FAILED",
                name="webhook_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("processed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_events_due",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text("status != 'PROCESSED'"),
            sqlite_where=sa.text("status != 'PROCESSED'"),
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_events_received_at"), ["received_at"], unique=False
        )

    op.create_table(
        "contacts",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("wa_id", sa.String(length=32), nullable=True),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("username", sa.String(length=128), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("phone_number", sa.String(length=32), nullable=True),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("opted_out_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_contacts_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
    )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contacts_org_id_name"), ["org_id", "name"], unique=False
        )
        batch_op.create_index(
            "uq_contacts_org_id_user_id",
            ["org_id", "user_id"],
            unique=True,
            postgresql_where=sa.text("user_id IS NOT NULL"),
            sqlite_where=sa.text("user_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_contacts_org_id_wa_id",
            ["org_id", "wa_id"],
            unique=True,
            postgresql_where=sa.text("wa_id IS NOT NULL"),
            sqlite_where=sa.text("wa_id IS NOT NULL"),
        )

    op.create_table(
        "template_status_events",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("business_account_id", sa.String(length=64), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=True),
        sa.Column("template_name", sa.String(length=512), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_template_status_events_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_template_status_events")),
    )
    with op.batch_alter_table("template_status_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_template_status_events_org_id_created_at"),
            ["org_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "conversations",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "OPEN",
                "PENDING",
                "RESOLVED",
                name="conversation_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("assignee_membership_id", sa.Uuid(), nullable=True),
        sa.Column("unread_count", sa.Integer(), nullable=False),
        sa.Column("last_message_id", sa.Uuid(), nullable=True),
        sa.Column("last_message_at", UTCDateTime(), nullable=True),
        sa.Column("last_inbound_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["whatsapp_accounts.id"],
            name=op.f("fk_conversations_account_id_whatsapp_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["assignee_membership_id"],
            ["memberships.id"],
            name=op.f("fk_conversations_assignee_membership_id_memberships"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_conversations_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_conversations_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversations_org_id_assignee_membership_id_last_message_at"),
            ["org_id", "assignee_membership_id", "last_message_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_org_id_last_message_at_id"),
            ["org_id", "last_message_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_org_id_status_last_message_at"),
            ["org_id", "status", "last_message_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_conversations_org_id_contact_id_account_id",
            ["org_id", "contact_id", "account_id"],
            unique=True,
        )

    op.create_table(
        "messages",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "direction",
            sa.Enum(
                "INBOUND",
                "OUTBOUND",
                name="message_direction",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media", sa.JSON(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "RECEIVED",
                "QUEUED",
                "SENDING",
                "SENT",
                "DELIVERED",
                "READ",
                "FAILED",
                name="message_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_title", sa.String(length=500), nullable=True),
        sa.Column("wa_message_id", sa.String(length=128), nullable=True),
        sa.Column("client_message_id", sa.String(length=128), nullable=True),
        sa.Column("reply_to_wa_message_id", sa.String(length=128), nullable=True),
        sa.Column("sent_by_membership_id", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("status_updated_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_messages_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sent_by_membership_id"],
            ["memberships.id"],
            name=op.f("fk_messages_sent_by_membership_id_memberships"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_messages_org_id_conversation_id_id"),
            ["org_id", "conversation_id", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_messages_outbox",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text("status IN ('QUEUED', 'SENDING')"),
            sqlite_where=sa.text("status IN ('QUEUED', 'SENDING')"),
        )
        batch_op.create_index(
            "uq_messages_org_id_client_message_id",
            ["org_id", "client_message_id"],
            unique=True,
            postgresql_where=sa.text("client_message_id IS NOT NULL"),
            sqlite_where=sa.text("client_message_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_messages_org_id_wa_message_id",
            ["org_id", "wa_message_id"],
            unique=True,
            postgresql_where=sa.text("wa_message_id IS NOT NULL"),
            sqlite_where=sa.text("wa_message_id IS NOT NULL"),
        )

    for table in WORKSPACE_TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in WORKSPACE_TABLES:
        disable_tenant_rls(table)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_messages_org_id_wa_message_id",
            postgresql_where=sa.text("wa_message_id IS NOT NULL"),
            sqlite_where=sa.text("wa_message_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_messages_org_id_client_message_id",
            postgresql_where=sa.text("client_message_id IS NOT NULL"),
            sqlite_where=sa.text("client_message_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_messages_outbox",
            postgresql_where=sa.text("status IN ('QUEUED', 'SENDING')"),
            sqlite_where=sa.text("status IN ('QUEUED', 'SENDING')"),
        )
        batch_op.drop_index(batch_op.f("ix_messages_org_id_conversation_id_id"))

    op.drop_table("messages")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("uq_conversations_org_id_contact_id_account_id")
        batch_op.drop_index(batch_op.f("ix_conversations_org_id_status_last_message_at"))
        batch_op.drop_index(batch_op.f("ix_conversations_org_id_last_message_at_id"))
        batch_op.drop_index(
            batch_op.f("ix_conversations_org_id_assignee_membership_id_last_message_at")
        )

    op.drop_table("conversations")
    with op.batch_alter_table("template_status_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_template_status_events_org_id_created_at"))

    op.drop_table("template_status_events")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_contacts_org_id_wa_id",
            postgresql_where=sa.text("wa_id IS NOT NULL"),
            sqlite_where=sa.text("wa_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_contacts_org_id_user_id",
            postgresql_where=sa.text("user_id IS NOT NULL"),
            sqlite_where=sa.text("user_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_contacts_org_id_name"))

    op.drop_table("contacts")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_received_at"))
        batch_op.drop_index(
            "ix_webhook_events_due",
            postgresql_where=sa.text("status != 'PROCESSED'"),
            sqlite_where=sa.text("status != 'PROCESSED'"),
        )

    op.drop_table("webhook_events")
