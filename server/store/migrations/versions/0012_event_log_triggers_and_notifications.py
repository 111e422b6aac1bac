"""event log, triggers and notifications

Revision ID: 0012
Revises: 0011b
Create Date: 2026-12-05 18:28:08

The event log becomes how other replicas hear that an A2A task moved (its task.* events), so the
PostgreSQL trigger of migration 0009 that announced every orch_tasks update goes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS orch_tasks_a2a_change ON orch_tasks")
        op.execute("DROP FUNCTION IF EXISTS orch_announce_a2a_task_change()")
    op.create_table(
        "orch_event_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=60), nullable=False),
        sa.Column("subject", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=60), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=True),
        sa.Column("owner", sa.String(length=60), nullable=True),
        sa.Column("depth", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_orch_event_log")),
        sa.UniqueConstraint("id", name=op.f("uq_orch_event_log_id")),
    )
    with op.batch_alter_table("orch_event_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orch_event_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_orch_event_log_subject"), ["subject"], unique=False)
        batch_op.create_index("ix_orch_event_log_tx_seq", ["tx", "seq"], unique=False)

    op.create_table(
        "orch_notification_channels",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=True),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("filter", sa.Text(), nullable=True),
        sa.Column("max_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("cursor", sa.String(length=40), nullable=False),
        sa.Column("created_by", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('webhook', 'slack', 'a2a')", name=op.f("ck_orch_notification_channels_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_notification_channels")),
        sa.UniqueConstraint("name", name=op.f("uq_orch_notification_channels_name")),
    )
    op.create_table(
        "orch_notification_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')", name=op.f("ck_orch_notification_deliveries_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_notification_deliveries")),
        sa.UniqueConstraint("channel_id", "event_id", name="uq_orch_notification_deliveries_channel_id_event_id"),
    )
    with op.batch_alter_table("orch_notification_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orch_notification_deliveries_channel_id_status", ["channel_id", "status", "created_at"], unique=False
        )

    op.create_table(
        "orch_triggers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=True),
        sa.Column("owner", sa.String(length=60), nullable=False),
        sa.Column("owner_role", sa.String(length=20), nullable=False),
        sa.Column("owner_profile", sa.String(length=100), nullable=True),
        sa.Column("next_due_at", sa.BigInteger(), nullable=True),
        sa.Column("cursor", sa.String(length=40), nullable=True),
        sa.Column("fired", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_fired_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('schedule', 'event', 'absence', 'webhook')", name=op.f("ck_orch_triggers_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_triggers")),
        sa.UniqueConstraint("name", name=op.f("uq_orch_triggers_name")),
    )
    with op.batch_alter_table("orch_triggers", schema=None) as batch_op:
        batch_op.create_index("ix_orch_triggers_kind_next_due_at", ["kind", "next_due_at"], unique=False)

    op.create_table(
        "orch_trigger_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("trigger_id", sa.String(length=40), nullable=False),
        sa.Column("occasion", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_kind", sa.String(length=20), nullable=True),
        sa.Column("created_id", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["orch_triggers.id"],
            name=op.f("fk_orch_trigger_runs_trigger_id_orch_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_trigger_runs")),
        sa.UniqueConstraint("trigger_id", "occasion", name="uq_orch_trigger_runs_trigger_id_occasion"),
    )
    with op.batch_alter_table("orch_trigger_runs", schema=None) as batch_op:
        batch_op.create_index("ix_orch_trigger_runs_trigger_id_at", ["trigger_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orch_trigger_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_trigger_runs_trigger_id_at")

    op.drop_table("orch_trigger_runs")
    with op.batch_alter_table("orch_triggers", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_triggers_kind_next_due_at")

    op.drop_table("orch_triggers")
    with op.batch_alter_table("orch_notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_notification_deliveries_channel_id_status")

    op.drop_table("orch_notification_deliveries")
    op.drop_table("orch_notification_channels")
    with op.batch_alter_table("orch_event_log", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_event_log_tx_seq")
        batch_op.drop_index(batch_op.f("ix_orch_event_log_subject"))
        batch_op.drop_index(batch_op.f("ix_orch_event_log_at"))

    op.drop_table("orch_event_log")
    if op.get_bind().dialect.name == "postgresql":
        _restore_0009_trigger()


def _restore_0009_trigger() -> None:
    op.execute(
        """
        CREATE FUNCTION orch_announce_a2a_task_change() RETURNS trigger AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM orch_a2a_tasks WHERE id = NEW.id) THEN
                PERFORM pg_notify('agentfleet_task_changes', NEW.id);
            END IF;
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER orch_tasks_a2a_change AFTER UPDATE ON orch_tasks FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status
              OR OLD.attempts IS DISTINCT FROM NEW.attempts
              OR OLD.progress IS DISTINCT FROM NEW.progress
              OR OLD.progress_message IS DISTINCT FROM NEW.progress_message)
        EXECUTE FUNCTION orch_announce_a2a_task_change()
        """
    )
