"""SQLAlchemy Core tables. Times are integer microseconds since the epoch (UTC), so both
dialects compare and index them identically; money (later) is integer micro-dollars."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from server.domain.approval import ApprovalStatus, Decision
from server.domain.budget import Enforcement, HoldStatus, Period
from server.domain.principal import TOKEN_ROLES
from server.domain.statuses import AgentStatus, LockStatus, TaskStatus
from server.domain.workflow_status import RunStatus, StepStatus

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
    "orch_agents",
    metadata,
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
    # Snapshot of the profile's limit at spawn: editing a profile file never changes running agents.
    Column("max_concurrency", Integer, nullable=False),
    Column("heartbeat_timeout_s", Integer, nullable=False, server_default=text("60")),
    # Budget pools the agent joined (from its profile and its spawn call): scopes `pool:<name>`.
    Column("pools", JSON, nullable=False, server_default=text("'[]'")),
    # Its profile runs task payloads as code: it claims only executable tasks.
    Column("runs_payloads", Boolean, nullable=False, server_default=false()),
    # Process agents: the replica that runs them, the OS process (pid plus its start time, so a
    # reused pid is never mistaken for it), and the supervisor's plan.
    Column("replica_id", String(200), nullable=True, index=True),
    Column("pid", Integer, nullable=True),
    Column("pid_start", String(80), nullable=True),
    Column("launched_at", BigInteger, nullable=True),
    Column("restarts", Integer, nullable=False, server_default=text("0")),
    Column("last_exit", String(200), nullable=True),
    # Set: (re)start the process once this time comes (stopping the running one first).
    Column("next_start_at", BigInteger, nullable=True),
    # Set while stopping: SIGKILL if the process has not exited by then.
    Column("stop_deadline", BigInteger, nullable=True),
    # a2a agents: the remote agent's base URL.
    Column("a2a_url", String(2000), nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in AgentStatus]), name="status"),
)

tasks = Table(
    "orch_tasks",
    metadata,
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
    # Task engine: when the task may next be claimed, its place in line, lease and retry policy.
    Column("ready_at", BigInteger, nullable=False),
    Column("dispatch_key", BigInteger, nullable=False),
    Column("lease_s", Integer, nullable=False),
    Column("backoff_base_ms", Integer, nullable=False),
    Column("backoff_cap_ms", Integer, nullable=False),
    Column("progress", SmallInteger, nullable=True),
    Column("progress_message", Text, nullable=True),
    Column("usage", JSON, nullable=True),
    Column("unroutable", Boolean, nullable=False, default=False),
    # Resources the task needs ([{name, mode}]): it is claimed only together with their locks.
    Column("resources", JSON(none_as_null=True), nullable=True),
    # Set once a lock was ever bound to the task, so ending a task looks for locks only then.
    Column("has_locks", Boolean, nullable=False, default=False),
    # Its submitter may have code run: only such tasks reach agents whose profile runs payloads.
    Column("executable", Boolean, nullable=False, server_default=false()),
    # Reserved from the claiming agent's budgets at dispatch, settled when the attempt ends.
    Column("estimated_cost_micros", BigInteger, nullable=True),
    # The approval it waited for, if it needed one (orch_approvals.task_id points back).
    Column("approval_id", String(ID), nullable=True),
    # Wall-clock limit of one attempt, for whoever runs it (agentfleet worker kills the command).
    Column("timeout_s", Integer, nullable=True),
    # Its place in a workflow run: the step, and the item (for_each) or vote (consensus) index.
    Column("workflow_run_id", String(ID), nullable=True),
    Column("workflow_step", String(64), nullable=True),
    Column("workflow_index", Integer, nullable=True),
    # Tasks of one group go to distinct agents (a consensus step's votes).
    Column("distinct_group", String(120), nullable=True),
    # The W3C traceparent of its submit span (null unless tracing is on): a task is one trace.
    Column("traceparent", String(55), nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in TaskStatus]), name="status"),
    CheckConstraint("priority BETWEEN 0 AND 3", name="priority"),
    CheckConstraint("attempts <= max_attempts", name="attempts"),
    CheckConstraint("progress IS NULL OR progress BETWEEN 0 AND 100", name="progress"),
    # A running task always has a holder and a lease; only a running task has a lease.
    CheckConstraint("(status = 'running') = (lease_expires_at IS NOT NULL)", name="lease_iff_running"),
    CheckConstraint("status <> 'running' OR agent_id IS NOT NULL", name="running_has_holder"),
    # fleet_status counts by (status, priority) from this index alone.
    Index("ix_orch_tasks_status_priority", "status", "priority"),
    Index("ix_orch_tasks_workflow", "workflow_run_id", "workflow_step", "workflow_index"),
    # No agent holds (or last held) two tasks of one group: the distinct-agents rule, in the store.
    Index(
        "ux_orch_tasks_distinct_group",
        "distinct_group",
        "agent_id",
        unique=True,
        sqlite_where=text("distinct_group IS NOT NULL AND agent_id IS NOT NULL"),
        postgresql_where=text("distinct_group IS NOT NULL AND agent_id IS NOT NULL"),
    ),
    # The queue: only queued rows, in dispatch order.
    Index(
        "ix_orch_tasks_ready",
        "dispatch_key",
        "id",
        sqlite_where=text("status = 'queued'"),
        postgresql_where=text("status = 'queued'"),
    ),
    # Queued tasks that wait for resources: woken when resources are freed.
    Index(
        "ix_orch_tasks_resource_queue",
        "dispatch_key",
        "id",
        sqlite_where=text("status = 'queued' AND resources IS NOT NULL"),
        postgresql_where=text("status = 'queued' AND resources IS NOT NULL"),
    ),
    Index(
        "ix_orch_tasks_leases",
        "lease_expires_at",
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
)

task_attempts = Table(
    "orch_task_attempts",
    metadata,
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("agent_id", String(ID), ForeignKey("orch_agents.id"), nullable=False, index=True),
    Column("started_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=True),
    Column("outcome", String(20), nullable=True),
    Column("error", Text, nullable=True),
    # Lines appended with task_log so far: the next line's seq (orch_task_logs).
    Column("log_lines", Integer, nullable=False, server_default=text("0")),
    CheckConstraint(
        "outcome IS NULL OR " + _one_of("outcome", ["completed", "failed", "expired", "cancelled", "released"]),
        name="outcome",
    ),
)

TASK_LOG_LEVELS = ("debug", "info", "warning", "error")

# Lines an attempt's holder wrote with task_log; each attempt keeps its newest lines up to a bound.
task_logs = Table(
    "orch_task_logs",
    metadata,
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("level", String(10), nullable=False),
    Column("line", Text, nullable=False),
    CheckConstraint(_one_of("level", list(TASK_LOG_LEVELS)), name="level"),
)

# Every resource ever locked: its semaphore capacity and the last fencing token it issued. Rows
# are never deleted, so fencing tokens increase across restarts and replicas.
resources = Table(
    "orch_resources",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("fence", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("capacity >= 1", name="capacity"),
    CheckConstraint("fence >= 0", name="fence"),
    # Every acquire reads the semaphores; the table keeps a row per name ever locked.
    Index(
        "ix_orch_resources_semaphores",
        "name",
        sqlite_where=text("capacity > 1"),
        postgresql_where=text("capacity > 1"),
    ),
)

locks = Table(
    "orch_locks",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("holder", String(60), nullable=False, index=True),
    # Who the wait-for graph calls this request's owner: its task, else its agent (admin: itself).
    Column("party", String(60), nullable=False),
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), nullable=True, index=True),
    Column("request_id", String(200), nullable=True),
    Column("status", String(20), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("ttl_s", Integer, nullable=True),  # null: lives as long as its task's lease
    Column("created_at", BigInteger, nullable=False),
    Column("granted_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("wait_until", BigInteger, nullable=True),
    Column("ended_at", BigInteger, nullable=True),
    Column("ended_by", String(60), nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in LockStatus]), name="status"),
    CheckConstraint("status <> 'waiting' OR wait_until IS NOT NULL", name="waiting_has_deadline"),
    CheckConstraint("status <> 'held' OR granted_at IS NOT NULL", name="held_was_granted"),
    CheckConstraint("ttl_s IS NOT NULL OR task_id IS NOT NULL", name="ttl_or_task"),
    # One live request per (holder, request_id): a retried acquire finds the first one.
    Index(
        "uq_orch_locks_request",
        "holder",
        "request_id",
        unique=True,
        sqlite_where=text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
        postgresql_where=text("status IN ('waiting', 'held') AND request_id IS NOT NULL"),
    ),
    Index(
        "ix_orch_locks_waiting",
        "priority",
        "id",
        sqlite_where=text("status = 'waiting'"),
        postgresql_where=text("status = 'waiting'"),
    ),
    Index(
        "ix_orch_locks_expiry",
        "expires_at",
        sqlite_where=text("status = 'held'"),
        postgresql_where=text("status = 'held'"),
    ),
)

lock_items = Table(
    "orch_lock_items",
    metadata,
    Column("lock_id", String(ID), ForeignKey("orch_locks.id"), primary_key=True),
    Column("name", String(300), primary_key=True),
    Column("mode", String(10), nullable=False),
    Column("root", String(300), nullable=False),
    Column("fence", BigInteger, nullable=True),  # set at grant
    Column("live", Boolean, nullable=False),  # its lock is waiting or held
    CheckConstraint("mode IN ('exclusive', 'shared')", name="mode"),
    Index("ix_orch_lock_items_live_root", "root", sqlite_where=text("live"), postgresql_where=text("live")),
)

# One budget per scope. spent counts the current period (period_start; 0 for `total`), reserved
# every open hold; a write that finds period_start behind the clock rolls the period over first.
budgets = Table(
    "orch_budgets",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("scope", String(120), nullable=False, unique=True),
    Column("limit_micros", BigInteger, nullable=False),
    Column("period", String(10), nullable=False),
    Column("enforcement", String(10), nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("period_start", BigInteger, nullable=False),
    Column("spent_micros", BigInteger, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
    # Tasks submitted under this budget estimated above this wait for approval.
    Column("approval_above_micros", BigInteger, nullable=True),
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint(_one_of("period", [p.value for p in Period]), name="period"),
    CheckConstraint(_one_of("enforcement", [e.value for e in Enforcement]), name="enforcement"),
    CheckConstraint("limit_micros >= 0 AND spent_micros >= 0 AND reserved_micros >= 0", name="amounts"),
)

# Money set aside before it is spent: by budget_reserve (with a TTL) or by a task's dispatch (for
# the attempt). budget_ids are the budgets whose `reserved` it was added to, so it leaves exactly those.
budget_holds = Table(
    "orch_budget_holds",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("holder", String(60), nullable=False, index=True),
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), nullable=True),
    Column("purpose", String(500), nullable=True),
    Column("amount_micros", BigInteger, nullable=False),
    Column("drawn_micros", BigInteger, nullable=False),  # usage recorded against it so far
    Column("spent_micros", BigInteger, nullable=True),  # set when settled
    Column("status", String(20), nullable=False),
    Column("budget_ids", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),  # null: lives as long as its task attempt
    Column("ended_at", BigInteger, nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in HoldStatus]), name="status"),
    CheckConstraint("drawn_micros >= 0 AND drawn_micros <= amount_micros", name="drawn"),
    CheckConstraint("expires_at IS NOT NULL OR task_id IS NOT NULL", name="ttl_or_task"),
    Index(
        "ix_orch_budget_holds_expiry",
        "expires_at",
        sqlite_where=text("status = 'held'"),
        postgresql_where=text("status = 'held'"),
    ),
    Index(
        "ix_orch_budget_holds_task",
        "task_id",
        sqlite_where=text("status = 'held'"),
        postgresql_where=text("status = 'held'"),
    ),
)

# The usage ledger: one immutable row per recorded spend (triggers refuse UPDATE and DELETE).
# scopes lists every scope the spender's spend counted in when it was recorded.
usage = Table(
    "orch_usage",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("at", BigInteger, nullable=False, index=True),
    Column("agent_id", String(ID), ForeignKey("orch_agents.id"), nullable=True),  # null: the admin's own
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), nullable=True),
    Column("task_type", String(100), nullable=True),
    Column("hold_id", String(ID), ForeignKey("orch_budget_holds.id"), nullable=True),
    Column("model", String(120), nullable=True),  # null: settled through budget_release
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_input_tokens", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("priced_by", String(20), nullable=False),  # price_table | caller | settlement
    Column("scopes", JSON, nullable=False),
    # It took a hard budget past its limit (reported after the fact): recorded, flagged, blocking.
    Column("over_limit", Boolean, nullable=False, server_default=false()),
    CheckConstraint("cost_micros >= 0", name="cost"),
)

# Things that happened that someone may want to hear about (budget thresholds now; more later).
# dedupe_key makes "once per period and threshold" a unique-index rule rather than a hope.
events = Table(
    "orch_events",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("kind", String(60), nullable=False),
    Column("subject", String(ID), nullable=False, index=True),
    Column("detail", JSON, nullable=False),
    Column("dedupe_key", String(200), nullable=True, unique=True),
)

# The store's one admin: the sha256 of the admin token of the first server that started on it.
admin_identity = Table(
    "orch_admin_identity",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("token_hash", String(64), nullable=False),
    Column("set_at", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="single"),
)

audit_log = Table(
    "orch_audit",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("principal", String(60), nullable=False),
    Column("role", String(20), nullable=False),
    Column("action", String(60), nullable=False),
    Column("subject", String(ID), nullable=False, index=True),
    Column("detail", JSON, nullable=False),
    # Why, in the caller's words; sha256 of the subject's stored row before and after the change.
    Column("reason", Text, nullable=True),
    Column("before_digest", String(64), nullable=True),
    Column("after_digest", String(64), nullable=True),
    # The hash chains (server/domain/audit_chain.py): which chain, the position in it, the previous
    # row's hash there, and this row's.
    Column("chain", SmallInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("chain", "seq", name="uq_orch_audit_chain_seq"),
)

# A2A tasks created through /a2a: the protocol's own record (opaque bytes written by the A2A
# adapter) beside the orchestrator task it mirrors, scoped to the principal that created it.
a2a_tasks = Table(
    "orch_a2a_tasks",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("owner", String(60), nullable=False),
    Column("context_id", String(200), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_orch_a2a_tasks_owner", "owner", "id"),
)

# Tokens for people and services (admin, operator, viewer); agents get theirs at spawn. Only the
# hash is kept; the name is the principal id that audit rows record, so it is never reused.
tokens = Table(
    "orch_tokens",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(60), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("rotated_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    CheckConstraint(_one_of("role", [r.value for r in TOKEN_ROLES]), name="role"),
)

# A task that waits for a person. status is the outcome; `expired` says nobody decided in time and
# the default (on_expiry) applied.
approvals = Table(
    "orch_approvals",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), nullable=False, unique=True),
    Column("status", String(20), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("requested_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("on_expiry", String(10), nullable=False),
    Column("decided_by", String(60), nullable=True),
    Column("decided_at", BigInteger, nullable=True),
    Column("note", Text, nullable=True),
    Column("expired", Boolean, nullable=False, default=False),
    CheckConstraint(_one_of("status", [s.value for s in ApprovalStatus]), name="status"),
    CheckConstraint(_one_of("on_expiry", [d.value for d in Decision]), name="on_expiry"),
    Index("ix_orch_approvals_status", "status", "id"),
    Index(
        "ix_orch_approvals_expiry",
        "expires_at",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

# One token bucket per rate-limited principal, shared by every replica.
rate_buckets = Table(
    "orch_rate_buckets",
    metadata,
    Column("principal", String(60), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Workflow templates: immutable (name, version) definitions; workflow_run(template="name@^1").
workflow_templates = Table(
    "orch_workflow_templates",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("version", String(40), primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # active | deprecated (run only when named exactly, or when no active version fits) | retired (never run)
    Column("state", String(20), nullable=False, server_default=text("'active'")),
    CheckConstraint(_one_of("state", ["active", "deprecated", "retired"]), name="state"),
)

# One row per workflow run: its definition as validated, its inputs, and where it stands. The
# submitter's role and profile are kept so later steps are submitted with the same rights.
workflow_runs = Table(
    "orch_workflow_runs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("template", String(150), nullable=True),
    Column("definition", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("on_failure", String(20), nullable=False),
    Column("submitted_by", String(60), nullable=False),
    Column("submitter_role", String(20), nullable=False),
    Column("submitter_profile", String(100), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in RunStatus]), name="status"),
    Index("ix_orch_workflow_runs_submitted_by", "submitted_by", "id"),
    Index("ix_orch_workflow_runs_status", "status"),
)

# One row per step of a run. `expected`/`finished` count a fan-out's tasks, so each task's end
# costs one counter update and only the last one gathers the results.
workflow_steps = Table(
    "orch_workflow_steps",
    metadata,
    Column("run_id", String(ID), ForeignKey("orch_workflow_runs.id"), primary_key=True),
    Column("step_id", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("expected", Integer, nullable=True),
    Column("finished", Integer, nullable=False, default=0),
    Column("result", JSON(none_as_null=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    CheckConstraint(_one_of("status", [s.value for s in StepStatus]), name="status"),
)

# The event log: one row per state change someone may act on, appended in the change's own
# transaction. Readers follow it by cursor (tx, seq): on PostgreSQL `tx` is the writer's
# transaction id and a reader sees only rows below the oldest transaction still running, so a row
# committed late can never appear behind a cursor already handed out (server/services/events/log.py).
# SQLite has one writer at a time: `tx` is 0 and `seq` is commit order.
event_log = Table(
    "orch_event_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("tx", BigInteger, nullable=False),
    Column("id", String(ID), nullable=False, unique=True),
    Column("at", BigInteger, nullable=False, index=True),
    Column("type", String(60), nullable=False),
    Column("subject", String(ID), nullable=False, index=True),
    Column("actor", String(60), nullable=False),
    # Who may read it besides staff: the agent it concerns and the principal that owns the subject.
    Column("agent_id", String(ID), nullable=True),
    Column("owner", String(60), nullable=True),
    # How many trigger firings led here: a trigger does not fire on events deeper than its limit.
    Column("depth", SmallInteger, nullable=False, server_default=text("0")),
    Column("data", JSON, nullable=False),
    Index("ix_orch_event_log_tx_seq", "tx", "seq"),
)

TRIGGER_KINDS = ["schedule", "event", "absence", "webhook"]

# Triggers: the fleet acting on a schedule, on an outside webhook, on its own events or on their
# absence. `next_due_at` is the next schedule time or the end of the current absence window;
# `cursor` is how far an event or absence trigger has read the event log.
triggers = Table(
    "orch_triggers",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("config", JSON, nullable=False),
    Column("action", JSON, nullable=False),
    Column("secret", String(200), nullable=True),
    Column("owner", String(60), nullable=False),
    Column("owner_role", String(20), nullable=False),
    Column("owner_profile", String(100), nullable=True),
    Column("next_due_at", BigInteger, nullable=True),
    Column("cursor", String(40), nullable=True),
    Column("fired", Integer, nullable=False, server_default=text("0")),
    Column("last_fired_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint(_one_of("kind", TRIGGER_KINDS), name="kind"),
    Index("ix_orch_triggers_kind_next_due_at", "kind", "next_due_at"),
)

# Every firing of a trigger. `occasion` names what it fired for (a due time, an event, a webhook
# delivery, a manual run): unique per trigger, so a due time or a delivery fires once however many
# replicas see it.
trigger_runs = Table(
    "orch_trigger_runs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("trigger_id", String(ID), ForeignKey("orch_triggers.id", ondelete="CASCADE"), nullable=False),
    Column("occasion", String(120), nullable=False),
    Column("reason", String(20), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_kind", String(20), nullable=True),
    Column("created_id", String(ID), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("trigger_id", "occasion", name="uq_orch_trigger_runs_trigger_id_occasion"),
    Index("ix_orch_trigger_runs_trigger_id_at", "trigger_id", "at"),
)

# Where events are sent: a person's webhook or a Slack incoming webhook, chosen by event type and
# filter. `cursor` is how far the channel has queued deliveries from the event log.
notification_channels = Table(
    "orch_notification_channels",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=True),
    Column("event_types", JSON, nullable=False),
    Column("filter", Text, nullable=True),
    Column("max_attempts", SmallInteger, nullable=False),
    Column("cursor", String(40), nullable=False),
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Only events about this id (an A2A push config follows its task); None: any subject.
    Column("subject", String(40), nullable=True),
    CheckConstraint("kind IN ('webhook', 'slack', 'a2a')", name="kind"),
)

# One row per event per channel, delivered at least once, in event order per channel: a channel's
# next delivery is tried only when the one before it is delivered or dead.
notification_deliveries = Table(
    "orch_notification_deliveries",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("channel_id", String(ID), nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("event_id", String(ID), nullable=False),
    Column("body", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("claimed_until", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    # The event's place in the log (its cursor): a channel's deliveries go out in this order.
    Column("event_cursor", String(32), nullable=False, server_default=""),
    Column("event_type", String(60), nullable=False, server_default=""),
    CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status"),
    UniqueConstraint("channel_id", "event_id", name="uq_orch_notification_deliveries_channel_id_event_id"),
    Index("ix_orch_notification_deliveries_channel_id_status", "channel_id", "status", "event_cursor"),
)

# A2A push notification configs (CreateTaskPushNotificationConfig): each is delivered by a
# channel of kind a2a that follows its task's events, so any replica's delivery loop sends it.
a2a_push_configs = Table(
    "orch_a2a_push_configs",
    metadata,
    Column("task_id", String(ID), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("owner", String(60), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("token", String(500), nullable=True),
    Column("auth_scheme", String(40), nullable=True),
    Column("auth_credentials", String(2000), nullable=True),
    Column(
        "channel_id",
        String(ID),
        ForeignKey("orch_notification_channels.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("created_at", BigInteger, nullable=False),
)

# Messages between agents and people. A message is stored once; each recipient has an inbox row,
# written in the same transaction as the message, so a send reaches every recipient or none.
messages = Table(
    "orch_messages",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("thread_id", String(ID), nullable=False),
    Column("sender", String(60), nullable=False),
    Column("sender_role", String(20), nullable=False),
    Column("subject", String(300), nullable=True),
    Column("body", Text, nullable=False),
    Column("importance", String(10), nullable=False),
    Column("reply_to", String(ID), nullable=True),
    Column("attachments", JSON, nullable=False),
    Column("ack_required", Boolean, nullable=False),
    Column("recipients", JSON, nullable=False),  # what `to` resolved to, for the thread view
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    CheckConstraint("importance IN ('low', 'normal', 'high', 'urgent')", name="importance"),
    Index("ix_orch_messages_thread_id_created_at", "thread_id", "created_at"),
)

# One row per recipient of a message: the recipient is a principal id (an agent, a person's token
# name, admin) or `@operators`, the inbox every operator and the admin read.
inbox = Table(
    "orch_inbox",
    metadata,
    Column("recipient", String(60), primary_key=True),
    Column("message_id", String(ID), ForeignKey("orch_messages.id", ondelete="CASCADE"), primary_key=True),
    Column("thread_id", String(ID), nullable=False),
    Column("sender", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("read_at", BigInteger, nullable=True),
    Column("acked_at", BigInteger, nullable=True),
    Index("ix_orch_inbox_recipient_unread", "recipient", "read_at", "message_id"),
)

topic_subscriptions = Table(
    "orch_topic_subscriptions",
    metadata,
    Column("topic", String(100), primary_key=True),
    Column("principal", String(60), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)
# Profiles as data: immutable (name, version) definitions with a lifecycle state. `revision` is
# drawn from one counter shared with rollouts, so a replica learns whether its copy is current
# from max(revision) alone (an index lookup).
profiles = Table(
    "orch_profiles",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("version", String(40), primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("state", String(20), nullable=False),
    Column("source", String(20), nullable=False),  # file | registered
    Column("created_by", String(60), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False, unique=True),
    CheckConstraint(_one_of("state", ["active", "deprecated", "retired"]), name="state"),
    CheckConstraint(_one_of("source", ["file", "registered"]), name="source"),
)

# A profile name's rollout: the weights (percent, summing to 100) by version that spawns naming no
# version follow; `previous` is what a rollback returns to.
profile_rollouts = Table(
    "orch_profile_rollouts",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("versions", JSON, nullable=False),
    Column("previous", JSON(none_as_null=True), nullable=True),
    Column("updated_by", String(60), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False, unique=True),
)

# Feedback on finished work: one row per (task, principal), changeable. A rating is good/bad or a
# score 1-5, never both.
task_feedback = Table(
    "orch_task_feedback",
    metadata,
    Column("task_id", String(ID), ForeignKey("orch_tasks.id"), primary_key=True),
    Column("principal", String(60), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("good", Boolean, nullable=True),
    Column("score", SmallInteger, nullable=True),
    Column("note", Text, nullable=True),
    Column("tags", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("(good IS NULL) <> (score IS NULL)", name="one_rating"),
    CheckConstraint("score IS NULL OR score BETWEEN 1 AND 5", name="score"),
)

# Scorecards read finished tasks by holder or type over a period from these indexes alone.
Index("ix_orch_tasks_agent_finished", tasks.c.agent_id, tasks.c.finished_at)
Index("ix_orch_tasks_type_finished", tasks.c.type, tasks.c.finished_at)
Index("ix_orch_agents_profile_version", agents.c.profile, agents.c.profile_version)
Index("ix_orch_usage_task", usage.c.task_id)
