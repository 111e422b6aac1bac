"""audit: hash chain

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 05:15:44.062134
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# A copy of server/domain/audit_chain.py as it was when this migration was written: a migration
# must keep producing the same rows whatever later code does.
_GENESIS = "0" * 64
_CHAINED = ("chain", "seq", "at", "principal", "role", "action", "subject", "detail", "prev_hash")


def _row_hash(row: dict) -> str:
    canonical = json.dumps({k: row[k] for k in _CHAINED}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("orch_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain", sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    # Chain the rows written before chains existed, in the order they were written, as chain 0.
    audit = sa.table(
        "orch_audit",
        *(
            sa.column(name)
            for name in ("id", "at", "principal", "role", "action", "subject", "seq", "prev_hash", "hash")
        ),
        sa.column("detail", sa.JSON),
    )
    bind = op.get_bind()
    prev = _GENESIS
    rows = bind.execute(sa.select(audit).order_by(audit.c.at, audit.c.id)).mappings().all()
    for seq, found in enumerate(rows, start=1):
        row = {**found, "seq": seq, "prev_hash": prev}
        prev = _row_hash(row)
        bind.execute(
            audit.update().where(audit.c.id == row["id"]).values(seq=seq, prev_hash=row["prev_hash"], hash=prev)
        )
    with op.batch_alter_table("orch_audit", schema=None) as batch_op:
        batch_op.alter_column("chain", existing_type=sa.SmallInteger(), nullable=False)
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint("uq_orch_audit_chain_seq", ["chain", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("orch_audit", schema=None) as batch_op:
        batch_op.drop_constraint("uq_orch_audit_chain_seq", type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
        batch_op.drop_column("chain")
