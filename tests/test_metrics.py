"""Each metric moves when its event happens, through the tools (in-process MCP client) and the
registry the /metrics endpoint renders; labels stay bounded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.instruments import OTHER, BoundedLabel
from server.metrics import Metrics
from server.services.container import Services
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(services: Services) -> Samples:
    text = Metrics(services.fleet, services.instruments).render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def spawn(admin: Any, profile: str = "worker") -> dict[str, Any]:
    return await call(admin, "agent_spawn", profile=profile)


async def test_queue_depth_age_wait_and_run_time_move_with_the_task_cycle(
    fake_connect: Any, fake_time_services: Services, clock: Any
) -> None:
    services = fake_time_services
    async with fake_connect() as admin:
        worker = await spawn(admin)
        first = await call(admin, "task_submit", type="build", priority="high")
        await call(admin, "task_submit", type="build", priority="high", max_attempts=2)
        clock.advance(30)
        queued = scrape(services)
        assert value(queued, "agentfleet_queue_depth", priority="high") == 2
        assert value(queued, "agentfleet_queue_depth", priority="low") == 0
        assert value(queued, "agentfleet_queue_oldest_age_seconds", priority="high") == 30
        assert value(queued, "agentfleet_queue_oldest_age_seconds", priority="low") == 0

    async with fake_connect(worker["token"]) as agent:
        claimed = (await call(agent, "task_claim"))["task"]
        assert claimed["id"] == first["id"]
        clock.advance(5)
        await call(agent, "task_complete", task_id=claimed["id"], result={"ok": True})
        second = (await call(agent, "task_claim"))["task"]
        await call(agent, "task_fail", task_id=second["id"], error="boom")  # retried later
    after = scrape(services)
    assert value(after, "agentfleet_queue_depth", priority="high") == 1
    assert value(after, "agentfleet_task_queue_wait_seconds_count", task_type="build") == 2
    assert value(after, "agentfleet_task_queue_wait_seconds_sum", task_type="build") == 30 + 35
    assert value(after, "agentfleet_task_run_seconds_count", task_type="build", outcome="completed") == 1
    assert value(after, "agentfleet_task_run_seconds_sum", task_type="build", outcome="completed") == 5
    assert value(after, "agentfleet_task_run_seconds_count", task_type="build", outcome="failed") == 1
    assert value(after, "agentfleet_task_attempts_total", outcome="completed") == 1
    assert value(after, "agentfleet_task_attempts_total", outcome="failed") == 1

    clock.advance(400)  # past the retry's backoff: it runs again and its lease lapses
    async with fake_connect(worker["token"]) as agent:
        assert (await call(agent, "task_claim"))["task"]["id"] == second["id"]
    clock.advance(120)
    assert await services.leases.reap_once() == 1
    reaped = scrape(services)
    assert value(reaped, "agentfleet_task_attempts_total", outcome="expired") == 1
    assert value(reaped, "agentfleet_queue_depth", priority="high") == 0


async def test_spend_locks_approvals_and_workflow_runs_are_counted(connect: Any, services: Services) -> None:
    async with connect() as admin:
        worker = await spawn(admin)
        other = await spawn(admin)
        await call(admin, "task_submit", type="deploy", requires_approval=True)
        await call(
            admin,
            "workflow_run",
            definition={"name": "probe", "steps": [{"id": "one", "task": {"type": "research"}}]},
        )
    async with connect(worker["token"]) as agent, connect(other["token"]) as rival:
        await call(agent, "usage_record", model="in-house-7b", input_tokens=1, output_tokens=1, cost_usd="0.25")
        await call(agent, "usage_record", model="in-house-7b", input_tokens=1, output_tokens=1, cost_usd="0.5")
        grant = await call(agent, "lock_acquire", resources=[{"name": "device:1", "mode": "exclusive"}], ttl_s=60)
        assert grant["granted"]
        seen: Samples = {}
        async with anyio.create_task_group() as group:

            async def wait_for_lock() -> None:
                await call(rival, "lock_acquire", resources=[{"name": "device:1", "mode": "exclusive"}], wait_s=30)

            group.start_soon(wait_for_lock)
            with anyio.fail_after(10):
                while value(seen, "agentfleet_locks", status="waiting") == 0:
                    await anyio.sleep(0.02)
                    seen = scrape(services)
            await call(agent, "lock_release", lock_id=grant["lock_id"])
    samples = scrape(services)
    assert value(samples, "agentfleet_spend_usd_total", model="in-house-7b", profile="worker") == 0.75
    assert value(seen, "agentfleet_locks", status="held") == 1
    assert value(seen, "agentfleet_locks", status="waiting") == 1
    assert value(samples, "agentfleet_locks", status="held") == 1  # the rival's, granted on release
    assert value(samples, "agentfleet_locks", status="waiting") == 0
    assert value(samples, "agentfleet_approvals_pending") == 1
    assert value(samples, "agentfleet_approval_oldest_age_seconds") >= 0
    assert value(samples, "agentfleet_workflow_runs", status="running") == 1
    assert value(samples, "agentfleet_workflow_runs", status="completed") == 0
    assert value(samples, "agentfleet_lock_wait_seconds_count") == 1  # the rival's; the first was granted at once

    async with connect(worker["token"]) as agent:  # the workflow's one step: research
        step_task = (await call(agent, "task_claim"))["task"]
        assert step_task["type"] == "research"
        await call(agent, "task_complete", task_id=step_task["id"], result={"summary": "done"})
    stepped = scrape(services)
    assert value(stepped, "agentfleet_workflow_step_seconds_count", workflow="probe", status="completed") == 1
    assert value(stepped, "agentfleet_workflow_runs", status="completed") == 1

    async with connect() as admin:
        (pending,) = (await call(admin, "approval_list", status="pending"))["approvals"]
        await call(admin, "approval_decide", approval_id=pending["id"], decision="approve")
    decided = scrape(services)
    assert value(decided, "agentfleet_approvals_pending") == 0
    assert value(decided, "agentfleet_approval_decision_seconds_count", decision="approve", by="person") == 1
    assert value(decided, "agentfleet_approval_decision_seconds_count", decision="reject", by="expiry") == 0


async def test_the_standard_process_and_python_collectors_are_there(services: Services) -> None:
    samples = scrape(services)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert any(name == "python_info" for name, _ in samples)
    assert any(name == "python_gc_collections_total" for name, _ in samples)


def test_caller_chosen_labels_stay_bounded() -> None:
    label = BoundedLabel(limit=3)
    assert [label(f"type-{i}") for i in range(5)] == ["type-0", "type-1", "type-2", OTHER, OTHER]
    assert label("type-1") == "type-1" and label(None) == "none"


DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(agentfleet_[a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE))


@pytest.mark.slow
async def test_every_metric_is_documented_and_a_metrics_token_reads_only_metrics(
    serve: ServeFactory, database_url: str
) -> None:
    scraper = "scrape-only-secret-0123456789"
    server = serve(database_url, env={"AGENTFLEET_METRICS_TOKEN": scraper})
    async with server.mcp() as admin:
        await call(admin, "task_submit", type="build", allow_unroutable=True)  # histograms get a sample
    async with server.http(scraper) as http:
        scraped = await http.get("/metrics")
        assert scraped.status_code == 200
        assert (await http.get("/readyz")).status_code == 401
        assert (await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})).status_code == 401
    async with server.http("wrong-" + scraper) as http:
        assert (await http.get("/metrics")).status_code == 401
    async with server.http(server.admin_token) as http:
        assert (await http.get("/metrics")).status_code == 200  # any valid token still may
    exposed = {
        f.name
        for f in text_string_to_metric_families(scraped.text)
        if f.name.startswith("agentfleet_") and not f.name.endswith("_created")
    }
    # Prometheus drops a counter's _total from its family name; the docs name the sample.
    documented = {name.removesuffix("_total") for name in documented_metrics()}
    assert exposed == documented
    assert scraper not in server.stderr() + server.stdout()

    # The shipped dashboard and alert rules query only series this server exposes.
    series = set()
    for family in text_string_to_metric_families(scraped.text):  # names a query may use, samples or not yet
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        series |= {family.name + suffix for suffix in suffixes}
    for shipped in (DEPLOY / "grafana-dashboard.json", DEPLOY / "prometheus-alerts.yaml"):
        text = shipped.read_text(encoding="utf-8")
        queried = set(re.findall(r"\b((?:agentfleet|process|python)_[a-z_]+)\b", text))
        assert queried, shipped
        assert queried <= series, f"{shipped.name} queries what /metrics lacks: {sorted(queried - series)}"


def test_the_dashboard_and_alert_rules_are_well_formed() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert dashboard["uid"] == "agentfleet" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"] and all(t["expr"] for t in panel["targets"])
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yaml").read_text(encoding="utf-8"))
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for needed in ("AgentfleetQueueStuck", "AgentfleetAgentsFlapping", "AgentfleetBudgetAtThreshold"):
        assert alerts[needed]["expr"] and alerts[needed]["annotations"]["summary"]
