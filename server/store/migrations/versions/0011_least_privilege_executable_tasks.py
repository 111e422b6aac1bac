"""least privilege: executable tasks and payload-running agents

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 15:20:00

An agent whose profile runs task payloads as code claims only tasks whose submitter was allowed
to have code run (admin, operator, or an agent whose profile grants permissions.execute). Rows that
exist before this migration are not executable: their submitters were never checked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy on SQLite): a copied table would lose its partial indexes'
    # conditions and its triggers.
    op.add_column("orch_tasks", sa.Column("executable", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("orch_agents", sa.Column("runs_payloads", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("orch_agents", schema=None) as batch_op:
        batch_op.drop_column("runs_payloads")
    with op.batch_alter_table("orch_tasks", schema=None) as batch_op:
        batch_op.drop_column("executable")
