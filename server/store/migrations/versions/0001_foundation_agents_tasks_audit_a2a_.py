"""foundation: agents, tasks, audit, a2a records

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:54:28.370472
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_a2a_tasks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=60), nullable=False),
        sa.Column("context_id", sa.String(length=200), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_a2a_tasks")),
    )
    with op.batch_alter_table("orch_a2a_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_orch_a2a_tasks_owner", ["owner", "id"], unique=False)

    op.create_table(
        "orch_agents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=100), nullable=False),
        sa.Column("profile_version", sa.String(length=40), nullable=False),
        sa.Column("runtime", sa.String(length=20), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.String(length=40), nullable=True),
        sa.Column("depth", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_heartbeat_at", sa.BigInteger(), nullable=True),
        sa.Column("terminated_at", sa.BigInteger(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('starting', 'active', 'unresponsive', 'stopping', 'terminated', 'failed')",
            name=op.f("ck_orch_agents_status"),
        ),
        sa.ForeignKeyConstraint(["parent_id"], ["orch_agents.id"], name=op.f("fk_orch_agents_parent_id_orch_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_agents")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_orch_agents_token_hash")),
    )
    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orch_agents_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_orch_agents_status"), ["status"], unique=False)

    op.create_table(
        "orch_audit",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("principal", sa.String(length=60), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("subject", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_audit")),
    )
    with op.batch_alter_table("orch_audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orch_audit_subject"), ["subject"], unique=False)

    op.create_table(
        "orch_tasks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("pinned_agent_id", sa.String(length=40), nullable=True),
        sa.Column("agent_id", sa.String(length=40), nullable=True),
        sa.Column("submitted_by", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending_approval', 'queued', 'running', 'completed', 'failed', 'cancelled', 'dead')",
            name=op.f("ck_orch_tasks_status"),
        ),
        sa.CheckConstraint("attempts <= max_attempts", name=op.f("ck_orch_tasks_attempts")),
        sa.CheckConstraint("priority BETWEEN 0 AND 3", name=op.f("ck_orch_tasks_priority")),
        sa.ForeignKeyConstraint(["agent_id"], ["orch_agents.id"], name=op.f("fk_orch_tasks_agent_id_orch_agents")),
        sa.ForeignKeyConstraint(
            ["pinned_agent_id"], ["orch_agents.id"], name=op.f("fk_orch_tasks_pinned_agent_id_orch_agents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_tasks")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_orch_tasks_idempotency_key")),
    )
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orch_tasks_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index("ix_orch_tasks_queue", ["status", "priority", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_tasks_queue")
        batch_op.drop_index(batch_op.f("ix_orch_tasks_agent_id"))

    op.drop_table("orch_tasks")
    with op.batch_alter_table("orch_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_audit_subject"))

    op.drop_table("orch_audit")
    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_agents_status"))
        batch_op.drop_index(batch_op.f("ix_orch_agents_parent_id"))

    op.drop_table("orch_agents")
    with op.batch_alter_table("orch_a2a_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_a2a_tasks_owner")

    op.drop_table("orch_a2a_tasks")
