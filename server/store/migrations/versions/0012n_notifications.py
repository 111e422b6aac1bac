"""notifications: a channel may follow one subject; deliveries keep their event's place in the log; A2A push configs

Revision ID: 0012n
Revises: 0012
Create Date: 2026-12-05 18:50:00

A channel's deliveries go out in log order, which on PostgreSQL is the event's (tx, seq) cursor,
not its seq alone; the delivery keeps that cursor (and the event's type for its headers). An A2A
push notification config is delivered by a channel of kind a2a that follows its task.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012n"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orch_notification_channels", sa.Column("subject", sa.String(length=40), nullable=True))
    op.add_column(
        "orch_notification_deliveries",
        sa.Column("event_cursor", sa.String(length=32), nullable=False, server_default=""),
    )
    op.add_column(
        "orch_notification_deliveries",
        sa.Column("event_type", sa.String(length=60), nullable=False, server_default=""),
    )
    op.drop_index("ix_orch_notification_deliveries_channel_id_status", table_name="orch_notification_deliveries")
    op.create_index(
        "ix_orch_notification_deliveries_channel_id_status",
        "orch_notification_deliveries",
        ["channel_id", "status", "event_cursor"],
        unique=False,
    )
    op.create_table(
        "orch_a2a_push_configs",
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=60), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("token", sa.String(length=500), nullable=True),
        sa.Column("auth_scheme", sa.String(length=40), nullable=True),
        sa.Column("auth_credentials", sa.String(length=2000), nullable=True),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["orch_notification_channels.id"],
            name=op.f("fk_orch_a2a_push_configs_channel_id_orch_notification_channels"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "id", name=op.f("pk_orch_a2a_push_configs")),
        sa.UniqueConstraint("channel_id", name=op.f("uq_orch_a2a_push_configs_channel_id")),
    )


def downgrade() -> None:
    op.drop_table("orch_a2a_push_configs")
    op.drop_index("ix_orch_notification_deliveries_channel_id_status", table_name="orch_notification_deliveries")
    op.create_index(
        "ix_orch_notification_deliveries_channel_id_status",
        "orch_notification_deliveries",
        ["channel_id", "status", "created_at"],
        unique=False,
    )
    with op.batch_alter_table("orch_notification_deliveries", schema=None) as batch_op:
        batch_op.drop_column("event_type")
        batch_op.drop_column("event_cursor")
    with op.batch_alter_table("orch_notification_channels", schema=None) as batch_op:
        batch_op.drop_column("subject")
