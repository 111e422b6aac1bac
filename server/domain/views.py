"""What services return and adapters publish: JSON-ready, explicitly typed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _nullable_as_type_lists(schema: dict[str, Any]) -> None:
    """Write `X | None` as {"type": ["x", "null"]} rather than anyOf: the same contract, and MCP
    clients validate every structured result against this schema (measured ~2x cheaper)."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if branches and all(set(b) == {"type"} for b in branches):
            del prop["anyOf"]
            prop["type"] = [b["type"] for b in branches]


class View(BaseModel):
    model_config = ConfigDict(json_schema_extra=_nullable_as_type_lists)


class ProcessView(View):
    replica_id: str | None = Field(description="the server replica that runs it (null: none has taken it yet)")
    pid: int | None = Field(description="its OS process id while running")
    restarts: int = Field(description="restarts after unexpected exits since spawn or the last agent_restart")
    last_exit: str | None = Field(description="how its last process ended, e.g. 'exit 1', 'killed by SIGKILL'")
    launched_at: str | None = Field(description="when its current (or last) process was started")
    next_start_at: str | None = Field(description="a (re)start is planned for this time")
    stdout_tail: str | None = Field(None, description="the end of its stdout log (agent_get, on its replica)")
    stderr_tail: str | None = Field(None, description="the end of its stderr log (agent_get, on its replica)")


class AgentView(View):
    id: str
    name: str
    profile: str = Field(description="name@version")
    runtime: str
    capabilities: list[str]
    parent_id: str | None
    depth: int
    status: str
    created_at: str
    last_heartbeat_at: str | None
    terminated_at: str | None
    labels: dict[str, str]
    pools: list[str] = Field(description="budget pools the agent belongs to (scopes pool:<name>)")
    children: list[str] | None = Field(None, description="ids of direct children (agent_get only)")
    process: ProcessView | None = Field(None, description="runtime process: pid, restarts, last exit, log tails")
    a2a_url: str | None = Field(None, description="runtime a2a: the remote agent it stands for")


class SpawnedAgent(View):
    agent: AgentView
    token: str | None = Field(
        description="the agent's bearer token; shown once, stored only as a hash. Null for process and a2a "
        "agents: the server runs those itself and hands each process a token of its own"
    )


class AgentList(View):
    agents: list[AgentView]


class TerminatedAgents(View):
    terminated: list[str] = Field(description="ids that this call terminated, the target first")
    stopping: list[str] = Field(
        default_factory=list,
        description="process agents still stopping when the call returned (draining, then SIGKILL at the "
        "profile's stop_timeout_s); each becomes terminated once its process exits",
    )


class AttemptView(View):
    number: int
    agent_id: str
    started_at: str
    ended_at: str | None
    outcome: str | None = Field(description="completed, failed, expired, cancelled, released; null while running")
    error: str | None


class TaskLogLine(View):
    attempt: int = Field(description="the attempt that wrote it")
    seq: int = Field(description="its place in that attempt's log, from 1")
    at: str
    level: str = Field(description="debug, info, warning or error")
    line: str


class TaskLogReceipt(View):
    task_id: str
    attempt: int
    appended: int = Field(description="lines added by this call")
    total: int = Field(description="lines this attempt has written so far")
    kept: int = Field(description="lines of this attempt still kept: the newest, up to the per-attempt bound")


class LockItemView(View):
    name: str
    mode: str
    fence: int | None = Field(description="fencing token: strictly increasing per resource across all grants")
    lock_id: str


class ApprovalView(View):
    id: str
    task_id: str
    task_type: str
    estimated_cost_usd: str | None
    status: str = Field(description="pending, approved, rejected, or withdrawn (its task was cancelled)")
    reasons: list[str] = Field(description="why the task needs approval")
    requested_by: str
    created_at: str
    expires_at: str = Field(description="when on_expiry applies if nobody decides")
    on_expiry: str = Field(description="the decision taken at expires_at: approve or reject")
    decided_by: str | None = Field(description="who decided; 'expiry' when nobody did in time")
    decided_at: str | None
    note: str | None = Field(description="the decider's note, for the requester")
    expired: bool = Field(description="nobody decided in time; an approval.escalated event was recorded")


class ApprovalPage(View):
    approvals: list[ApprovalView] = Field(description="oldest first")
    next_after_id: str | None = Field(description="pass as after_id for the next page; null at the end")


class TokenView(View):
    id: str
    name: str = Field(description="the principal id its calls are recorded under")
    role: str
    created_by: str
    created_at: str
    rotated_at: str | None
    expires_at: str | None
    revoked_at: str | None
    active: bool = Field(description="not revoked and not expired")


class IssuedToken(View):
    token: str = Field(description="the bearer secret: shown this once, stored only as a hash")
    details: TokenView


class TokenList(View):
    tokens: list[TokenView]


class FeedbackView(View):
    task_id: str
    principal: str = Field(description="who gave it: a token name, admin, or an agent id")
    role: str
    rating: str | int = Field(description="good, bad, or a score 1-5")
    note: str | None
    tags: list[str]
    created_at: str
    updated_at: str = Field(description="later than created_at when the principal changed its feedback")


class TaskView(View):
    id: str
    type: str
    payload: Any
    capabilities: list[str]
    priority: str
    status: str
    pinned_agent_id: str | None
    agent_id: str | None = Field(description="the agent holding or last holding the task")
    submitted_by: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    max_attempts: int
    lease_expires_at: str | None
    cancel_requested: bool
    idempotency_key: str | None
    result: Any
    error: str | None
    ready_at: str = Field(description="when the task is (or was) next claimable")
    lease_s: int
    progress: int | None
    progress_message: str | None
    usage: Any
    unroutable: bool = Field(description="queued although no live agent or profile had its capabilities")
    resources: list[dict[str, str]] | None = Field(
        description="resources the task needs ({name, mode}); it is claimed only together with their locks"
    )
    estimated_cost_usd: str | None = Field(
        None, description="set aside from the claiming agent's budgets for each attempt, settled when it ends"
    )
    locks: list[LockItemView] | None = Field(
        None, description="locks the current attempt holds, with fencing tokens (claim result and task_get)"
    )
    attempt_history: list[AttemptView] | None = Field(
        None, description="every attempt: filled by task_get (and the task resource), null elsewhere"
    )
    timeout_s: int | None = Field(
        None, description="wall-clock limit of one attempt; agentfleet worker kills the command past it"
    )
    approval: ApprovalView | None = Field(
        None, description="the approval the task waits or waited for: decision, who, note (task_submit, task_get)"
    )
    feedback: list[FeedbackView] | None = Field(
        None, description="feedback on the finished task, one per principal, oldest first (task_get; null elsewhere)"
    )
    traceparent: str | None = Field(
        None,
        description="the task's W3C trace context (null unless the server traces): send it with the calls "
        "made for the task (MCP _meta.traceparent, HTTP traceparent; agentfleet worker sets TRACEPARENT) "
        "so they join its trace",
    )
    log_tail: list[TaskLogLine] | None = Field(
        None, description="the newest lines its attempts wrote with task_log, oldest first (task_get; null elsewhere)"
    )


class LockView(View):
    id: str
    holder: str = Field(description="the agent (or admin) the lock belongs to")
    task_id: str | None = Field(description="set for task-scoped locks: released when the task ends")
    request_id: str | None
    status: str = Field(description="waiting, held, released, expired, timed_out, cancelled")
    priority: str
    resources: list[LockItemView]
    created_at: str
    granted_at: str | None
    expires_at: str | None = Field(description="lease end; null for locks that live as long as their task")
    wait_until: str | None = Field(description="a waiting request gives up at this time")
    ended_at: str | None
    ended_by: str | None
    queue_position: int | None = Field(
        None, description="waiting only: 1 + the waiting requests ahead of it that want a conflicting resource"
    )


class LockConflict(View):
    resource: str = Field(description="the resource you asked for")
    blocked_by: str = Field(description="the resource name held or awaited by the other party")
    lock_id: str
    holder: str
    mode: str
    status: str = Field(description="held, or waiting (queued ahead of you)")
    expires_at: str | None


class LockGrant(View):
    granted: bool
    lock_id: str | None = Field(description="the lock; null when not granted with wait_s=0")
    expires_at: str | None
    fencing_tokens: dict[str, int] = Field(description="resource name -> fencing token; send it with every write")
    lock: LockView | None
    conflicts: list[LockConflict] = Field(description="not granted: who holds or awaits what you asked for")


class LockList(View):
    locks: list[LockView]


class ResourceView(View):
    name: str
    capacity: int = Field(description="holders of this exact name that may coexist (1: a plain lock)")
    fence: int = Field(description="the last fencing token issued for it")
    holders: int


class ClaimResult(View):
    task: TaskView | None = Field(description="the leased task, or null if none was available in time")
    reason: str | None = Field(None, description="why no task: 'none_available' or 'at_capacity'")


class TaskLease(View):
    task_id: str
    lease_expires_at: str
    cancel_requested: bool = Field(description="true: stop work and call task_fail; the task ends cancelled")
    progress: int | None


class TaskReceipt(View):
    """What task_submit answers: enough to follow the task, without echoing its payload back."""

    id: str
    type: str
    status: str
    priority: str
    capabilities: list[str]
    pinned_agent_id: str | None
    created_at: str
    ready_at: str
    max_attempts: int
    idempotency_key: str | None
    unroutable: bool
    approval: ApprovalView | None = Field(
        None, description="set when the task waits in pending_approval: why, and until when"
    )
    result: Any = Field(None, description="with wait_s: the result, when the task completed in time")
    error: str | None = Field(None, description="with wait_s: why it failed, when it ended in time without success")
    finished_at: str | None = Field(None, description="with wait_s: when it ended, if it did in time")
    traceparent: str | None = Field(None, description="the task's W3C trace context; null unless the server traces")

    @classmethod
    def of(cls, task: TaskView) -> TaskReceipt:
        return cls.model_construct(**{name: getattr(task, name) for name in cls.model_fields})


class TaskWaitResult(View):
    tasks: list[TaskView] = Field(description="each task as it stands, in the order asked")
    done: bool = Field(description="the wait's condition held (any / all of them ended) before wait_s ran out")


class TaskList(View):
    tasks: list[TaskView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class ThresholdView(View):
    percent: int
    action: str = Field(description="notify, warn, or block (hard budgets: no new dispatch or spawn)")
    crossed: bool = Field(description="reached in the current period")


class BudgetSummary(View):
    scope: str
    period: str
    enforcement: str
    limit_usd: str
    spent_usd: str = Field(description="recorded spend in the current period")
    reserved_usd: str = Field(description="set aside by open holds")
    percent: float = Field(description="spent plus reserved, as a percent of the limit")
    blocked: bool = Field(
        description="a hard budget at its block threshold or overspent: no new dispatch, spawn or reserve in scope"
    )
    overspent: bool = Field(
        False, description="a hard budget whose spend, reported after the fact, passed its limit (recorded, flagged)"
    )


class BudgetView(BudgetSummary):
    id: str
    remaining_usd: str = Field(description="limit minus spent minus reserved (never below 0)")
    thresholds: list[ThresholdView]
    approval_above_usd: str | None = Field(
        None, description="tasks submitted under it with a larger estimated_cost_usd wait for approval"
    )
    period_start: str | None = Field(description="UTC start of the current period; null for `total`")
    period_end: str | None = Field(description="when spend resets; null for `total`")
    created_at: str
    updated_at: str


class BudgetEvent(View):
    id: str
    at: str
    percent: int
    action: str
    committed_usd: str = Field(description="spent plus reserved when the threshold was crossed")


class BudgetReport(View):
    budget: BudgetView
    spent_last_hour_usd: str
    spent_last_day_usd: str
    burn_usd_per_hour: str = Field(description="the last hour's spend, or the last day's average if that hour was idle")
    forecast_exhausted_at: str | None = Field(description="when the limit is reached at the burn rate; null if idle")
    by_agent: dict[str, str] = Field(description="current-period spend per agent id ('admin' for the admin's own)")
    by_model: dict[str, str] = Field(description="current-period spend per model ('settlement' for budget_release)")
    by_task_type: dict[str, str] = Field(description="current-period spend per task type ('none': no task)")
    events: list[BudgetEvent] = Field(description="thresholds crossed in the current period")


class BudgetReports(View):
    budgets: list[BudgetReport]


class HoldView(View):
    id: str
    holder: str = Field(description="the agent (or admin) whose money is set aside")
    task_id: str | None = Field(description="set for a task's dispatch hold: settled when the attempt ends")
    purpose: str | None
    status: str = Field(description="held, settled or expired")
    amount_usd: str
    drawn_usd: str = Field(description="usage recorded against the hold so far")
    spent_usd: str | None = Field(description="what was spent under it, once settled or expired")
    budgets: list[str] = Field(description="scopes whose reserved amount it counts in")
    created_at: str
    expires_at: str | None
    ended_at: str | None


class UsageReceipt(View):
    id: str
    model: str
    cost_usd: str
    priced_by: str = Field(description="price_table, or caller (cost_usd was given)")
    task_id: str | None
    hold_id: str | None
    drawn_from_hold_usd: str = Field(description="how much of the cost the hold had set aside")
    budgets: list[BudgetSummary] = Field(description="every budget the spend counted in, after it")


class FleetStatus(View):
    agents: dict[str, int] = Field(description="agent count by status")
    tasks: dict[str, dict[str, int]] = Field(description="task count by status, then by priority")
    unroutable: int = Field(description="queued tasks no live agent or profile could run when submitted")
    totals: dict[str, int]
    budgets: list[BudgetSummary] = Field(description="every budget with its percent used in the current period")


class AuditEntry(View):
    chain: int = Field(description="which hash chain the row is in")
    seq: int = Field(description="position in its chain")
    id: str
    at: str
    principal: str = Field(description="who acted: admin, a token's name, an agent id, or a server loop (reaper)")
    role: str
    action: str = Field(description="e.g. task.submit, lock.force_release, budget.reserve")
    subject: str = Field(description="the id acted on")
    detail: dict[str, Any]
    reason: str | None = Field(None, description="why, in the caller's words (the reason argument)")
    before_digest: str | None = Field(None, description="sha256 of the subject's stored row before the change")
    after_digest: str | None = Field(None, description="sha256 of the subject's stored row after the change")
    hash: str = Field(description="sha256 over this row's content and the previous row's hash in its chain")


class AuditPage(View):
    entries: list[AuditEntry] = Field(description="newest first")
    next_before_id: str | None = Field(description="pass as before_id for the next (older) page; null at the end")


class WorkflowStepView(View):
    id: str
    kind: str = Field(description="task, for_each (one task per item) or consensus (one task per agent)")
    status: str = Field(description="pending, running, completed, failed, skipped or cancelled")
    depends_on: list[str]
    tasks: dict[str, int] = Field(description="the step's tasks by status")
    task_ids: list[str] | None = Field(description="the step's tasks in order (null above 50: use task_list)")
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    result: Any = Field(
        description="the task's result; for_each: every result in item order; consensus: {value, decided, "
        "disagreement, received, votes: [{value, count}], agents}"
    )
    error: str | None = Field(description="why it failed, or why it was skipped")


class CriticalPath(View):
    steps: list[str] = Field(description="the chain of dependent steps that took longest, first to last")
    duration_s: float


class WorkflowView(View):
    id: str
    name: str
    template: str | None = Field(description="name@version it was run from, if a template")
    status: str = Field(description="running, completed, failed or cancelled")
    on_failure: str = Field(description="fail_fast or continue (steps may override)")
    inputs: dict[str, Any]
    submitted_by: str
    created_at: str
    finished_at: str | None
    duration_s: float | None
    error: str | None
    steps: list[WorkflowStepView] = Field(description="in definition order")
    critical_path: CriticalPath


class WorkflowSummary(View):
    id: str
    name: str
    template: str | None
    status: str
    submitted_by: str
    created_at: str
    finished_at: str | None
    steps: dict[str, int] = Field(description="step count by status")


class WorkflowList(View):
    runs: list[WorkflowSummary]
    next_cursor: str | None


class WorkflowTemplateSummary(View):
    name: str
    versions: list[str] = Field(description="newest first; run one with workflow_run(template='name@version')")
    description: str | None
    inputs: list[str] = Field(description="the newest version's inputs; workflow_template_get shows their types")
    steps: list[str]


class WorkflowTemplateList(View):
    templates: list[WorkflowTemplateSummary]


class WorkflowTemplateView(View):
    name: str
    version: str
    ref: str = Field(description="name@version, for workflow_run(template=…)")
    created: bool = Field(description="false when this exact version was already saved with this definition")
    created_by: str
    created_at: str
    steps: list[str]
    definition: dict[str, Any]
    state: str = Field(
        "active", description="active, deprecated (runs only when named exactly or no active version fits), retired"
    )


class ProfileView(View):
    name: str
    version: str
    ref: str = Field(description="name@version, for agent_spawn(profile=…)")
    state: str = Field(description="active, deprecated (spawned only when named exactly) or retired (no new spawns)")
    source: str = Field(description="file (imported from a profiles folder at start) or registered (profile_register)")
    runtime: str
    description: str
    created: bool | None = Field(
        None, description="profile_register: false when this exact version was already registered with this body"
    )
    created_by: str
    created_at: str
    updated_at: str
    definition: dict[str, Any] | None = Field(None, description="the full definition (profile_get, profile_register)")


class RolloutView(View):
    name: str
    versions: dict[str, int] = Field(description="version -> percent of spawns that name no version; sums to 100")
    previous: dict[str, int] | None = Field(description="the rollout before this one: what a rollback returns to")
    updated_by: str
    updated_at: str


class ProfileList(View):
    profiles: list[ProfileView]
    rollouts: list[RolloutView] = Field(description="rollouts of the listed names")


class ProfileExport(View):
    ref: str
    yaml: str = Field(description="the definition as YAML: a file for AGENTFLEET_PROFILES_DIR or profile_register")
    definition: dict[str, Any]


class Percentiles(View):
    p50: float | None = Field(description="seconds; null when no task had both ends")
    p95: float | None


class FeedbackCounts(View):
    good: int
    bad: int
    scored: int = Field(description="feedback given as a score 1-5")
    mean_score: float | None = Field(description="mean of the scores 1-5; null when none")


class ScoreFigures(View):
    since: str
    until: str
    completed: int
    failed: int
    dead: int
    finished: int = Field(description="completed + failed + dead in the period (by finish time)")
    success_rate: float | None = Field(description="completed / finished; null when nothing finished")
    retries_per_task: float | None = Field(description="mean attempts beyond the first")
    queue_wait_s: Percentiles = Field(description="submission to first start")
    run_time_s: Percentiles = Field(description="first start to end, retries included")
    cost_usd: str = Field(description="spend recorded against these tasks (usage ledger)")
    cost_per_task_usd: str | None
    feedback: FeedbackCounts


class ScorecardView(View):
    scope: str
    period: str
    current: ScoreFigures
    previous: ScoreFigures = Field(description="the period before, of the same length")
    trend: dict[str, float | None] = Field(
        description="current minus previous: finished, success_rate (fraction), retries_per_task, "
        "run_time_p50_s, queue_wait_p50_s, cost_per_task_usd, mean_score"
    )


class Significance(View):
    test: str = Field(description="which test: two-proportion z-test, Mann-Whitney U (normal approximation)")
    statistic: float | None
    p_value: float | None = Field(description="two-sided; null when there is too little data")
    significant: bool = Field(description="p < 0.05")
    sample: str = Field(description="what the test was run on")


class ProfileComparison(View):
    name: str
    version_a: str
    version_b: str
    period: str
    a: ScoreFigures
    b: ScoreFigures
    difference: dict[str, float | None] = Field(description="b minus a, for the same figures as a scorecard's trend")
    success_rate_test: Significance
    run_time_test: Significance
    verdict: str = Field(description="the comparison in a sentence or two, naming each test and its p-value")
