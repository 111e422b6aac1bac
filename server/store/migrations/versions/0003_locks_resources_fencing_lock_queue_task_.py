"""locks: resources, fencing, lock queue, task resources

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 01:53:13.556481
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_resources",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("capacity >= 1", name=op.f("ck_orch_resources_capacity")),
        sa.CheckConstraint("fence >= 0", name=op.f("ck_orch_resources_fence")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orch_resources")),
    )
    op.create_table(
        "orch_locks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("holder", sa.String(length=60), nullable=False),
        sa.Column("party", sa.String(length=60), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("ttl_s", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("granted_at", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("wait_until", sa.BigInteger(), nullable=True),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_by", sa.String(length=60), nullable=True),
        sa.CheckConstraint("status <> 'held' OR granted_at IS NOT NULL", name=op.f("ck_orch_locks_held_was_granted")),
        sa.CheckConstraint(
            "status <> 'waiting' OR wait_until IS NOT NULL", name=op.f("ck_orch_locks_waiting_has_deadline")
        ),
        sa.CheckConstraint(
            "status IN ('waiting', 'held', 'released', 'expired', 'timed_out', 'cancelled')",
            name=op.f("ck_orch_locks_status"),
        ),
        sa.CheckConstraint("ttl_s IS NOT NULL OR task_id IS NOT NULL", name=op.f("ck_orch_locks_ttl_or_task")),
        sa.ForeignKeyConstraint(["task_id"], ["orch_tasks.id"], name=op.f("fk_orch_locks_task_id_orch_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_locks")),
    )
    with op.batch_alter_table("orch_locks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orch_locks_expiry",
            ["expires_at"],
            unique=False,
            sqlite_where=sa.text("status = 'held'"),
            postgresql_where=sa.text("status = 'held'"),
        )
        batch_op.create_index(batch_op.f("ix_orch_locks_holder"), ["holder"], unique=False)
        batch_op.create_index(batch_op.f("ix_orch_locks_task_id"), ["task_id"], unique=False)
        batch_op.create_index(
            "ix_orch_locks_waiting",
            ["priority", "id"],
            unique=False,
            sqlite_where=sa.text("status = 'waiting'"),
            postgresql_where=sa.text("status = 'waiting'"),
        )
        batch_op.create_index(
            "uq_orch_locks_request",
            ["holder", "request_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
            postgresql_where=sa.text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
        )

    op.create_table(
        "orch_lock_items",
        sa.Column("lock_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("root", sa.String(length=300), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=True),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.CheckConstraint("mode IN ('exclusive', 'shared')", name=op.f("ck_orch_lock_items_mode")),
        sa.ForeignKeyConstraint(["lock_id"], ["orch_locks.id"], name=op.f("fk_orch_lock_items_lock_id_orch_locks")),
        sa.PrimaryKeyConstraint("lock_id", "name", name=op.f("pk_orch_lock_items")),
    )
    with op.batch_alter_table("orch_lock_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orch_lock_items_live_root",
            ["root"],
            unique=False,
            sqlite_where=sa.text("live"),
            postgresql_where=sa.text("live"),
        )

    # Existing tasks need no resources and never had locks.
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resources", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("has_locks", sa.Boolean(), nullable=True))
    op.execute("UPDATE orch_tasks SET has_locks = false")
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.alter_column("has_locks", existing_type=sa.Boolean(), nullable=False)
        batch_op.create_index(
            "ix_orch_tasks_resource_queue",
            ["dispatch_key", "id"],
            unique=False,
            sqlite_where=sa.text("status = 'queued' AND resources IS NOT NULL"),
            postgresql_where=sa.text("status = 'queued' AND resources IS NOT NULL"),
        )
    with op.batch_alter_table("orch_resources", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orch_resources_semaphores",
            ["name"],
            unique=False,
            sqlite_where=sa.text("capacity > 1"),
            postgresql_where=sa.text("capacity > 1"),
        )


def downgrade() -> None:
    with op.batch_alter_table("orch_resources", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_resources_semaphores")
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_tasks_resource_queue")
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_column("has_locks")
        batch_op.drop_column("resources")

    with op.batch_alter_table("orch_lock_items", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_orch_lock_items_live_root", sqlite_where=sa.text("live"), postgresql_where=sa.text("live")
        )

    op.drop_table("orch_lock_items")
    with op.batch_alter_table("orch_locks", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_orch_locks_request",
            sqlite_where=sa.text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
            postgresql_where=sa.text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_orch_locks_waiting",
            sqlite_where=sa.text("status = 'waiting'"),
            postgresql_where=sa.text("status = 'waiting'"),
        )
        batch_op.drop_index(batch_op.f("ix_orch_locks_task_id"))
        batch_op.drop_index(batch_op.f("ix_orch_locks_holder"))
        batch_op.drop_index(
            "ix_orch_locks_expiry", sqlite_where=sa.text("status = 'held'"), postgresql_where=sa.text("status = 'held'")
        )

    op.drop_table("orch_locks")
    op.drop_table("orch_resources")
