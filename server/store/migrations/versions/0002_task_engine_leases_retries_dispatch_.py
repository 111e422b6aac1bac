"""task engine: leases, retries, dispatch order, attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 23:58:58.119311
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_task_attempts",
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('completed', 'failed', 'expired', 'cancelled', 'released')",
            name=op.f("ck_orch_task_attempts_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["orch_agents.id"], name=op.f("fk_orch_task_attempts_agent_id_orch_agents")
        ),
        sa.ForeignKeyConstraint(["task_id"], ["orch_tasks.id"], name=op.f("fk_orch_task_attempts_task_id_orch_tasks")),
        sa.PrimaryKeyConstraint("task_id", "number", name=op.f("pk_orch_task_attempts")),
    )
    with op.batch_alter_table("orch_task_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orch_task_attempts_agent_id"), ["agent_id"], unique=False)

    # Existing tasks get the engine's defaults: ready since creation, in line by priority with the
    # default aging step (600 s), a 60 s lease, 1 s / 5 min backoff.
    new_columns = [
        sa.Column("ready_at", sa.BigInteger(), nullable=True),
        sa.Column("dispatch_key", sa.BigInteger(), nullable=True),
        sa.Column("lease_s", sa.Integer(), nullable=True),
        sa.Column("backoff_base_ms", sa.Integer(), nullable=True),
        sa.Column("backoff_cap_ms", sa.Integer(), nullable=True),
        sa.Column("unroutable", sa.Boolean(), nullable=True),
    ]
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        for column in new_columns:
            batch_op.add_column(column)
        batch_op.add_column(sa.Column("progress", sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column("progress_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("usage", sa.JSON(), nullable=True))
    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_concurrency", sa.Integer(), nullable=True))
    op.execute("UPDATE orch_agents SET max_concurrency = 1")
    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.alter_column("max_concurrency", existing_type=sa.Integer(), nullable=False)
    op.execute(
        "UPDATE orch_tasks SET ready_at = created_at, dispatch_key = priority * 600000000 + created_at, "
        "lease_s = 60, backoff_base_ms = 1000, backoff_cap_ms = 300000, unroutable = false"
    )
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        for column in new_columns:
            batch_op.alter_column(column.name, existing_type=column.type, nullable=False)
        batch_op.drop_index(batch_op.f("ix_orch_tasks_queue"))
        batch_op.create_index(
            "ix_orch_tasks_leases",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("status = 'running'"),
            postgresql_where=sa.text("status = 'running'"),
        )
        batch_op.create_index(
            "ix_orch_tasks_ready",
            ["dispatch_key", "id"],
            unique=False,
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        )
        batch_op.create_index("ix_orch_tasks_status_priority", ["status", "priority"], unique=False)
        batch_op.create_check_constraint(
            op.f("ck_orch_tasks_progress"), "progress IS NULL OR progress BETWEEN 0 AND 100"
        )
        batch_op.create_check_constraint(
            op.f("ck_orch_tasks_lease_iff_running"), "(status = 'running') = (lease_expires_at IS NOT NULL)"
        )
        batch_op.create_check_constraint(
            op.f("ck_orch_tasks_running_has_holder"), "status <> 'running' OR agent_id IS NOT NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_orch_tasks_running_has_holder"), type_="check")
        batch_op.drop_constraint(op.f("ck_orch_tasks_lease_iff_running"), type_="check")
        batch_op.drop_constraint(op.f("ck_orch_tasks_progress"), type_="check")
        batch_op.drop_index("ix_orch_tasks_status_priority")
        batch_op.drop_index(
            "ix_orch_tasks_ready",
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        )
        batch_op.drop_index(
            "ix_orch_tasks_leases",
            sqlite_where=sa.text("status = 'running'"),
            postgresql_where=sa.text("status = 'running'"),
        )
        batch_op.create_index(batch_op.f("ix_orch_tasks_queue"), ["status", "priority", "id"], unique=False)
        batch_op.drop_column("unroutable")
        batch_op.drop_column("usage")
        batch_op.drop_column("progress_message")
        batch_op.drop_column("progress")
        batch_op.drop_column("backoff_cap_ms")
        batch_op.drop_column("backoff_base_ms")
        batch_op.drop_column("lease_s")
        batch_op.drop_column("dispatch_key")
        batch_op.drop_column("ready_at")

    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.drop_column("max_concurrency")

    with op.batch_alter_table("orch_task_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_task_attempts_agent_id"))

    op.drop_table("orch_task_attempts")
