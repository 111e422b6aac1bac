"""admin identity: one admin token per store, kept as its hash

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


def downgrade() -> None:
    op.drop_table("orch_admin_identity")
