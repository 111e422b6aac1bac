"""Prometheus instruments. One registry per app, so several apps in one process (tests) never
collide; agent and task gauges are read from the store at scrape time, so every replica reports
the same fleet."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.instruments import Instruments
from server.services.fleet import FleetService


class _FleetCollector(Collector):
    def __init__(self, fleet: FleetService) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._fleet.counts_sync()
        agents = GaugeMetricFamily("agentfleet_agents", "Agents by status", labels=["status"])
        for name, count in status.agents.items():
            agents.add_metric([name], count)
        tasks = GaugeMetricFamily("agentfleet_tasks", "Tasks by status and priority", labels=["status", "priority"])
        for name, by_priority in status.tasks.items():
            for priority, count in by_priority.items():
                tasks.add_metric([name, priority], count)
        budget = GaugeMetricFamily(
            "agentfleet_budget_percent", "Budget used (spent + reserved) as a percent of its limit", labels=["scope"]
        )
        for summary in status.budgets:
            budget.add_metric([summary.scope], summary.percent)
        yield agents
        yield tasks
        yield budget
        yield from _store_gauges(self._fleet)


def _store_gauges(fleet: FleetService) -> Iterator[GaugeMetricFamily]:
    gauges = fleet.gauges_sync()
    depth = GaugeMetricFamily(
        "agentfleet_queue_depth", "Queued tasks by priority (claimable now or after a backoff)", labels=["priority"]
    )
    age = GaugeMetricFamily(
        "agentfleet_queue_oldest_age_seconds",
        "How long the longest-waiting claimable queued task has waited, by priority (0: none waiting)",
        labels=["priority"],
    )
    for priority, queue in gauges.queue.items():
        depth.add_metric([priority], queue.depth)
        age.add_metric([priority], queue.oldest_ready_age_s)
    locks = GaugeMetricFamily("agentfleet_locks", "Lock requests held and waiting", labels=["status"])
    for status, count in gauges.locks.items():
        locks.add_metric([status], count)
    runs = GaugeMetricFamily("agentfleet_workflow_runs", "Workflow runs by status", labels=["status"])
    for status, count in gauges.workflow_runs.items():
        runs.add_metric([status], count)
    yield depth
    yield age
    yield locks
    yield runs
    yield GaugeMetricFamily(
        "agentfleet_approvals_pending", "Approvals waiting for a decision", gauges.approvals_pending
    )
    yield GaugeMetricFamily(
        "agentfleet_approval_oldest_age_seconds",
        "How long the oldest pending approval has waited (0: none pending)",
        gauges.oldest_approval_age_s,
    )


class Metrics:
    def __init__(self, fleet: FleetService, instruments: Instruments | None = None) -> None:
        self.registry = CollectorRegistry()
        # The standard ones: CPU, memory, open files, GC, interpreter version.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.http_requests = Counter(
            "agentfleet_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.http_latency = Histogram(
            "agentfleet_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tool_calls = Counter(
            "agentfleet_tool_calls",
            "MCP tool calls by tool and outcome (ok or an error code)",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(fleet))
        for collector in (instruments or Instruments()).collectors():
            self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
