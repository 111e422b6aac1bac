"""admin identity and overspend: one admin token per store, kept as its hash; usage over a hard limit flagged

Revision ID: 0011b
Revises: 0011
Create Date: 2026-12-05 15:55:00

Replicas sharing a store must share one admin: the first server to start records its admin
token's sha256; a replica started with another token refuses to start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011b"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_admin_identity",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("set_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_orch_admin_identity_single")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orch_admin_identity")),
    )
    # Plain ADD COLUMN: a batch copy on SQLite would drop the triggers that keep the ledger immutable.
    op.add_column("orch_usage", sa.Column("over_limit", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("orch_usage", schema=None) as batch_op:
        batch_op.drop_column("over_limit")
    op.drop_table("orch_admin_identity")
