"""SQLAlchemy Core tables. Times are integer microseconds since the epoch (UTC), so both
dialects compare and index them identically; money (later) is integer micro-dollars."""

from __future__ import annotations

from sqlalchemy import (
    JSON, BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, LargeBinary, MetaData,
    SmallInteger, String, Table, Text,
)

from server.domain.statuses import AgentStatus, TaskStatus

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

ID = 40


def _one_of(column: str, values: list[str]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


agents = Table(
    "orch_agents", metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("profile", String(100), nullable=False),
    Column("profile_version", String(40), nullable=False),
    Column("runtime", String(20), nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("parent_id", String(ID), ForeignKey("orch_agents.id"), nullable=True, index=True),
    Column("depth", SmallInteger, nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_heartbeat_at", BigInteger, nullable=True),
    Column("terminated_at", BigInteger, nullable=True),
    Column("labels", JSON, nullable=False),
    CheckConstraint(_one_of("status", [s.value for s in AgentStatus]), name="status"),
)

tasks = Table(
    "orch_tasks", metadata,
    Column("id", String(ID), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("pinned_agent_id", String(ID), ForeignKey("orch_agents.id"), nullable=True),
    Column("agent_id", String(ID), ForeignKey("orch_agents.id"), nullable=True, index=True),
    Column("submitted_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("spec_hash", String(64), nullable=False),
    CheckConstraint(_one_of("status", [s.value for s in TaskStatus]), name="status"),
    CheckConstraint("priority BETWEEN 0 AND 3", name="priority"),
    CheckConstraint("attempts <= max_attempts", name="attempts"),
    # The dispatch order: status filter, then priority rank, then FIFO by id.
    Index("ix_orch_tasks_queue", "status", "priority", "id"),
)

audit_log = Table(
    "orch_audit", metadata,
    Column("id", String(ID), primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("principal", String(60), nullable=False),
    Column("role", String(20), nullable=False),
    Column("action", String(60), nullable=False),
    Column("subject", String(ID), nullable=False, index=True),
    Column("detail", JSON, nullable=False),
)

# A2A tasks created through /a2a: the protocol's own record (opaque bytes written by the A2A
# adapter) beside the orchestrator task it mirrors, scoped to the principal that created it.
a2a_tasks = Table(
    "orch_a2a_tasks", metadata,
    Column("id", String(ID), primary_key=True),
    Column("owner", String(60), nullable=False),
    Column("context_id", String(200), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_orch_a2a_tasks_owner", "owner", "id"),
)
