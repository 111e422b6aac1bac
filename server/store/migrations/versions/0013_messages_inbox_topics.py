"""messages: messages, inbox rows, topic subscriptions, full-text search

Revision ID: 0013
Revises: 0012n
Create Date: 2026-12-05 19:20:00

Search: an FTS5 table kept by triggers on SQLite (its shadow tables are not models), a GIN index on
the body's text vector on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012n"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("sender", sa.String(length=60), nullable=False),
        sa.Column("sender_role", sa.String(length=20), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("importance", sa.String(length=10), nullable=False),
        sa.Column("reply_to", sa.String(length=40), nullable=True),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("ack_required", sa.Boolean(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "importance IN ('low', 'normal', 'high', 'urgent')", name=op.f("ck_orch_messages_importance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_messages")),
    )
    with op.batch_alter_table("orch_messages", schema=None) as batch_op:
        batch_op.create_index("ix_orch_messages_thread_id_created_at", ["thread_id", "created_at"], unique=False)

    op.create_table(
        "orch_topic_subscriptions",
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("principal", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "principal", name=op.f("pk_orch_topic_subscriptions")),
    )
    op.create_table(
        "orch_inbox",
        sa.Column("recipient", sa.String(length=60), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("sender", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.BigInteger(), nullable=True),
        sa.Column("acked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["orch_messages.id"],
            name=op.f("fk_orch_inbox_message_id_orch_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("recipient", "message_id", name=op.f("pk_orch_inbox")),
    )
    with op.batch_alter_table("orch_inbox", schema=None) as batch_op:
        batch_op.create_index("ix_orch_inbox_recipient_unread", ["recipient", "read_at", "message_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_orch_messages_search ON orch_messages USING gin "
            "(to_tsvector('simple', coalesce(subject, '') || ' ' || body))"
        )
    else:
        op.execute(
            "CREATE VIRTUAL TABLE orch_messages_fts USING fts5(subject, body, content='orch_messages', "
            "content_rowid='rowid')"
        )
        op.execute(
            "CREATE TRIGGER orch_messages_fts_insert AFTER INSERT ON orch_messages BEGIN "
            "INSERT INTO orch_messages_fts(rowid, subject, body) VALUES (new.rowid, new.subject, new.body); END"
        )
        op.execute(
            "CREATE TRIGGER orch_messages_fts_delete AFTER DELETE ON orch_messages BEGIN "
            "INSERT INTO orch_messages_fts(orch_messages_fts, rowid, subject, body) "
            "VALUES ('delete', old.rowid, old.subject, old.body); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_orch_messages_search")
    else:
        op.execute("DROP TRIGGER IF EXISTS orch_messages_fts_insert")
        op.execute("DROP TRIGGER IF EXISTS orch_messages_fts_delete")
        op.execute("DROP TABLE IF EXISTS orch_messages_fts")
    with op.batch_alter_table("orch_inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_inbox_recipient_unread")

    op.drop_table("orch_inbox")
    op.drop_table("orch_topic_subscriptions")
    with op.batch_alter_table("orch_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_messages_thread_id_created_at")

    op.drop_table("orch_messages")
