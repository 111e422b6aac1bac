"""task logs: lines an attempt's holder appends (task_log), kept with the task

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 18:40:00

One row per line, keyed by task, attempt and a sequence the attempt's row hands out
(`log_lines`: the count appended so far), so concurrent appends by one holder never collide and
the newest lines are found by index. Each attempt keeps its newest lines up to a bound.

Also the task's W3C `traceparent` (null unless tracing is on): a task is one trace, whose context
travels with it to the agents that claim it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_task_logs",
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.CheckConstraint("level IN ('debug', 'info', 'warning', 'error')", name=op.f("ck_orch_task_logs_level")),
        sa.ForeignKeyConstraint(["task_id"], ["orch_tasks.id"], name=op.f("fk_orch_task_logs_task_id_orch_tasks")),
        sa.PrimaryKeyConstraint("task_id", "attempt", "seq", name=op.f("pk_orch_task_logs")),
    )
    # Plain ADD COLUMN (no batch copy on SQLite): a counter with a default, on a table other
    # migrations gave constraints to.
    op.add_column(
        "orch_task_attempts", sa.Column("log_lines", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("orch_tasks", sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
    with op.batch_alter_table("orch_task_attempts", schema=None) as batch_op:
        batch_op.drop_column("log_lines")
    op.drop_table("orch_task_logs")
