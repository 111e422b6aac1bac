"""profiles registry, rollouts and task feedback; indexes for scorecards

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 18:45:00

Profiles become rows (name, version, definition, state) every replica reads; files are imported
on start. Feedback is one row per (task, principal). Scorecards read finished tasks by agent or
type over a period, and their cost from the usage ledger by task, from the new indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_profiles",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=60), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('active', 'deprecated', 'retired')", name=op.f("ck_orch_profiles_state")),
        sa.CheckConstraint("source IN ('file', 'registered')", name=op.f("ck_orch_profiles_source")),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_orch_profiles")),
        sa.UniqueConstraint("revision", name=op.f("uq_orch_profiles_revision")),
    )
    op.create_table(
        "orch_profile_rollouts",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("previous", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("updated_by", sa.String(length=60), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orch_profile_rollouts")),
        sa.UniqueConstraint("revision", name=op.f("uq_orch_profile_rollouts_revision")),
    )
    op.create_table(
        "orch_task_feedback",
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("principal", sa.String(length=60), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("good", sa.Boolean(), nullable=True),
        sa.Column("score", sa.SmallInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("(good IS NULL) <> (score IS NULL)", name=op.f("ck_orch_task_feedback_one_rating")),
        sa.CheckConstraint("score IS NULL OR score BETWEEN 1 AND 5", name=op.f("ck_orch_task_feedback_score")),
        sa.ForeignKeyConstraint(["task_id"], ["orch_tasks.id"], name=op.f("fk_orch_task_feedback_task_id_orch_tasks")),
        sa.PrimaryKeyConstraint("task_id", "principal", name=op.f("pk_orch_task_feedback")),
    )
    with op.batch_alter_table("orch_workflow_templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=20), nullable=False, server_default="active"))
        batch_op.create_check_constraint("state", "state IN ('active', 'deprecated', 'retired')")
    # Plain CREATE INDEX (no batch copy): a copy of orch_usage would drop its immutability triggers.
    op.create_index("ix_orch_tasks_agent_finished", "orch_tasks", ["agent_id", "finished_at"], unique=False)
    op.create_index("ix_orch_tasks_type_finished", "orch_tasks", ["type", "finished_at"], unique=False)
    op.create_index("ix_orch_agents_profile_version", "orch_agents", ["profile", "profile_version"], unique=False)
    op.create_index("ix_orch_usage_task", "orch_usage", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_orch_usage_task", table_name="orch_usage")
    op.drop_index("ix_orch_agents_profile_version", table_name="orch_agents")
    op.drop_index("ix_orch_tasks_type_finished", table_name="orch_tasks")
    op.drop_index("ix_orch_tasks_agent_finished", table_name="orch_tasks")
    with op.batch_alter_table("orch_workflow_templates", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_orch_workflow_templates_state"), type_="check")
        batch_op.drop_column("state")
    op.drop_table("orch_task_feedback")
    op.drop_table("orch_profile_rollouts")
    op.drop_table("orch_profiles")
