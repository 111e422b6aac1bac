"""a2a task change notifications

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 13:10:00

On PostgreSQL a trigger announces every state or progress change of a task that an A2A client
created, whichever replica or code path made it, so streams on every replica follow the store.
SQLite has no channel between processes; its streams are woken after each local write instead.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHANNEL = "agentfleet_task_changes"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION orch_announce_a2a_task_change() RETURNS trigger AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM orch_a2a_tasks WHERE id = NEW.id) THEN
                PERFORM pg_notify('{CHANNEL}', NEW.id);
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


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER orch_tasks_a2a_change ON orch_tasks")
    op.execute("DROP FUNCTION orch_announce_a2a_task_change()")
