"""Prometheus instruments. One registry per app, so several apps in one process (tests) never
collide; agent and task gauges are read from the store at scrape time, so every replica reports
the same fleet."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class Metrics:
    def __init__(self, fleet: FleetService) -> None:
        self.registry = CollectorRegistry()
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
