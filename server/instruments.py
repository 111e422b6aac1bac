"""Counters and histograms the services move as things happen (an attempt ends, a task is
claimed, money is spent). Built once with the services, unregistered: each app's Metrics adds
them to its own registry, so several apps in one process (tests) never collide.

Every label is bounded: outcomes and priorities are fixed sets; task types, models and profiles
are caller-chosen text, so each label keeps the first `MAX_LABEL_VALUES` values it sees and
counts the rest as `_other` (a task id is never a label)."""

from __future__ import annotations

import threading
from decimal import Decimal

from prometheus_client import Counter, Histogram

MAX_LABEL_VALUES = 100
OTHER = "_other"
# From a sub-second claim to a day-long job.
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 86_400)


class BoundedLabel:
    """The first `limit` distinct values pass; later ones become `_other`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return "none"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


class Instruments:
    def __init__(self) -> None:
        self.task_type = BoundedLabel()
        self.workflow = BoundedLabel()
        self.model = BoundedLabel()
        self.profile = BoundedLabel()
        self.queue_wait = Histogram(
            "agentfleet_task_queue_wait_seconds",
            "Time a task waited claimable in the queue before an agent claimed it (each attempt)",
            ["task_type"],
            registry=None,
            buckets=_DURATION_BUCKETS,
        )
        self.run_time = Histogram(
            "agentfleet_task_run_seconds",
            "Time from claim to the end of an attempt, by task type and how the attempt ended",
            ["task_type", "outcome"],
            registry=None,
            buckets=_DURATION_BUCKETS,
        )
        self.attempts = Counter(
            "agentfleet_task_attempts",
            "Task attempts ended, by outcome: completed, failed, expired (lease lapsed), cancelled, released",
            ["outcome"],
            registry=None,
        )
        self.lock_wait = Histogram(
            "agentfleet_lock_wait_seconds",
            "Time a lock request that queued waited until it was granted",
            registry=None,
            buckets=_DURATION_BUCKETS,
        )
        self.approval_latency = Histogram(
            "agentfleet_approval_decision_seconds",
            "Time from an approval's request to its decision, by decision and by whom (person or expiry)",
            ["decision", "by"],
            registry=None,
            buckets=_DURATION_BUCKETS,
        )
        self.process_exits = Counter(
            "agentfleet_process_agent_exits",
            "Process agents' unexpected exits, by profile and what followed: restarted, or failed (restarts used up)",
            ["profile", "outcome"],
            registry=None,
        )
        self.step_time = Histogram(
            "agentfleet_workflow_step_seconds",
            "Time a workflow step ran, from its first task queued to its end, by workflow name and how it ended",
            ["workflow", "status"],
            registry=None,
            buckets=_DURATION_BUCKETS,
        )
        self.webhooks = Counter(
            "agentfleet_webhook_deliveries",
            "Deliveries to /hooks/{name}, by outcome: created, duplicate (a redelivery), unauthorized (bad "
            "or no signature: nothing stored), invalid (not JSON, too big, unstorable text), not_found",
            ["outcome"],
            registry=None,
        )
        self.spend = Counter(
            "agentfleet_spend_usd",
            "Money recorded with usage_record (USD), by model and the spending agent's profile",
            ["model", "profile"],
            registry=None,
        )

    def collectors(self) -> tuple[Counter | Histogram, ...]:
        return (
            self.queue_wait,
            self.run_time,
            self.attempts,
            self.spend,
            self.lock_wait,
            self.approval_latency,
            self.process_exits,
            self.step_time,
            self.webhooks,
        )

    # -- what the services call ------------------------------------------------------------------
    def claimed(self, task_type: str, waited_us: int) -> None:
        self.queue_wait.labels(self.task_type(task_type)).observe(max(waited_us, 0) / 1_000_000)

    def attempt_ended(self, task_type: str, outcome: str, ran_us: int | None) -> None:
        self.attempts.labels(outcome).inc()
        if ran_us is not None:
            self.run_time.labels(self.task_type(task_type), outcome).observe(max(ran_us, 0) / 1_000_000)

    def lock_granted_after_wait(self, waited_us: int) -> None:
        self.lock_wait.observe(max(waited_us, 0) / 1_000_000)

    def approval_decided(self, decision: str, expired: bool, waited_us: int) -> None:
        self.approval_latency.labels(decision, "expiry" if expired else "person").observe(max(waited_us, 0) / 1_000_000)

    def process_exited(self, profile: str, failed: bool) -> None:
        self.process_exits.labels(self.profile(profile), "failed" if failed else "restarted").inc()

    def step_finished(self, workflow: str, status: str, ran_us: int) -> None:
        self.step_time.labels(self.workflow(workflow), status).observe(max(ran_us, 0) / 1_000_000)

    def webhook(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def spent(self, model: str | None, profile: str | None, usd: Decimal) -> None:
        if usd > 0:
            self.spend.labels(self.model(model), self.profile(profile)).inc(float(usd))
