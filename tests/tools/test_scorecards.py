"""scorecard and profile_compare over a store whose figures are worked out by hand, through MCP."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from server.clock import MICROS
from server.services.scorecards import proportion_test, rank_test
from server.store.tables import task_feedback, tasks, usage
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio
HOUR = 3600 * MICROS
_ids = itertools.count()


def task_row(agent_id: str | None, status: str, finished_at: int, wait_s: float, run_s: float, **extra: Any):
    number = next(_ids)
    started = finished_at - int(run_s * MICROS)
    created = started - int(wait_s * MICROS)
    row = {
        "id": f"tsk_0SCORE{number:08d}",
        "type": "review",
        "payload": {},
        "capabilities": [],
        "priority": 2,
        "status": status,
        "agent_id": agent_id,
        "submitted_by": "admin",
        "created_at": created,
        "updated_at": finished_at,
        "started_at": started,
        "finished_at": finished_at,
        "attempts": 1,
        "max_attempts": 3,
        "cancel_requested": False,
        "spec_hash": "0" * 64,
        "ready_at": created,
        "dispatch_key": created,
        "lease_s": 60,
        "backoff_base_ms": 1000,
        "backoff_cap_ms": 300_000,
        "unroutable": False,
        "has_locks": False,
        "executable": False,
    }
    return row | extra


def spend(task: dict[str, Any], micros: int, at: int) -> dict[str, Any]:
    return {
        "id": f"use_0SCORE{next(_ids):08d}",
        "at": at,
        "agent_id": task["agent_id"],
        "task_id": task["id"],
        "task_type": task["type"],
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
        "cached_input_tokens": 0,
        "cost_micros": micros,
        "priced_by": "caller",
        "scopes": [],
    }


def opinion(task: dict[str, Any], principal: str, good: bool | None = None, score: int | None = None):
    return {
        "task_id": task["id"],
        "principal": principal,
        "role": "operator",
        "good": good,
        "score": score,
        "note": None,
        "tags": [],
        "created_at": task["finished_at"],
        "updated_at": task["finished_at"],
    }


def store(services, task_rows, usage_rows=(), feedback_rows=()):
    with services.db.engine.begin() as conn:
        conn.execute(tasks.insert(), list(task_rows))
        if usage_rows:
            conn.execute(usage.insert(), list(usage_rows))
        if feedback_rows:
            conn.execute(task_feedback.insert(), list(feedback_rows))


async def test_scorecard_figures_match_the_hand_computed_store(fake_connect, fake_time_services, clock):
    services = fake_time_services
    now = clock.now_us()
    async with fake_connect() as admin:
        a = (await call(admin, "agent_spawn", profile="worker"))["agent"]["id"]
        await call(admin, "profile_register", definition={"name": "worker", "version": "1.1.0", "description": "b"})
        b = (await call(admin, "agent_spawn", profile="worker@1.1.0"))["agent"]["id"]
        ops = (await call(admin, "token_create", name="ops", role="operator"))["token"]
    t1 = task_row(a, "completed", now - 10 * HOUR, wait_s=2, run_s=5)
    t2 = task_row(a, "completed", now - 9 * HOUR, wait_s=4, run_s=10, attempts=2)
    t3 = task_row(a, "failed", now - 8 * HOUR, wait_s=6, run_s=1, attempts=3)
    t4 = task_row(a, "dead", now - 7 * HOUR, wait_s=8, run_s=20, attempts=3)
    cancelled = task_row(a, "cancelled", now - 6 * HOUR, wait_s=1, run_s=1)
    earlier = task_row(a, "completed", now - 30 * HOUR, wait_s=1, run_s=3)
    too_old = task_row(a, "failed", now - 50 * HOUR, wait_s=1, run_s=3)
    other = task_row(b, "completed", now - 2 * HOUR, wait_s=1, run_s=1, type="build")
    store(
        services,
        [t1, t2, t3, t4, cancelled, earlier, too_old, other],
        [spend(t1, 100_000, now), spend(t2, 300_000, now), spend(t2, 200_000, now), spend(earlier, 1_000_000, now)],
        [opinion(t1, "admin", good=True), opinion(t1, "ops", score=5), opinion(t2, "admin", good=False)]
        + [opinion(t3, "ops", score=2)],
    )
    async with fake_connect() as admin:
        card = await call(admin, "scorecard", scope=f"agent:{a}", period="24h")
        by_version = await call(admin, "scorecard", scope="profile:worker@1.0.0", period="24h")
        by_name = await call(admin, "scorecard", scope="profile:worker", period="24h")
        by_type = await call(admin, "scorecard", scope="task_type:build", period="24h")
    current, previous = card["current"], card["previous"]
    assert (current["completed"], current["failed"], current["dead"], current["finished"]) == (2, 1, 1, 4)
    assert current["success_rate"] == 0.5 and current["retries_per_task"] == 1.25
    assert current["queue_wait_s"] == {"p50": 4.0, "p95": 8.0}
    assert current["run_time_s"] == {"p50": 5.0, "p95": 20.0}
    assert current["cost_usd"] == "0.600000" and current["cost_per_task_usd"] == "0.150000"
    assert current["feedback"] == {"good": 1, "bad": 1, "scored": 2, "mean_score": 3.5}
    assert (previous["finished"], previous["success_rate"], previous["cost_per_task_usd"]) == (1, 1.0, "1.000000")
    assert previous["run_time_s"] == {"p50": 3.0, "p95": 3.0}
    assert card["trend"]["finished"] == 3 and card["trend"]["success_rate"] == -0.5
    assert card["trend"]["cost_per_task_usd"] == pytest.approx(-0.85)
    assert by_version["current"] == current
    assert by_name["current"]["finished"] == 5 and by_name["current"]["completed"] == 3
    assert by_type["current"]["finished"] == 1 and by_type["current"]["success_rate"] == 1.0
    async with fake_connect(ops) as as_operator:
        assert (await call(as_operator, "scorecard", scope=f"agent:{a}", period="24h"))["current"] == current


async def test_an_agent_sees_only_its_own_scorecard_and_its_descendants(connect):
    async with connect() as admin:
        parent = await call(admin, "agent_spawn", profile="worker")
        stranger = await call(admin, "agent_spawn", profile="worker")
    async with connect(parent["token"]) as as_parent:
        child = await call(as_parent, "agent_spawn", profile="worker")
        own = await call(as_parent, "scorecard", scope=f"agent:{parent['agent']['id']}")
        assert own["current"]["finished"] == 0 and own["current"]["success_rate"] is None
        await call(as_parent, "scorecard", scope=f"agent:{child['agent']['id']}")
        for scope in (f"agent:{stranger['agent']['id']}", "profile:worker", "task_type:review"):
            refused = await call_error(as_parent, "scorecard", scope=scope)
            assert refused.code == "permission_denied", scope
        compare = await call_error(as_parent, "profile_compare", name="worker", version_a="1.0.0", version_b="1.0.1")
        assert compare.code == "permission_denied"


def versions_with(services, a: str, b: str, now: int, outcomes_a, outcomes_b):
    rows = []
    for agent, outcomes in ((a, outcomes_a), (b, outcomes_b)):
        for i, (status, run_s) in enumerate(outcomes):
            rows.append(task_row(agent, status, now - 2 * HOUR - i * MICROS, wait_s=1, run_s=run_s))
    store(services, rows)


async def _two_versions(fake_connect):
    async with fake_connect() as admin:
        await call(admin, "profile_register", definition={"name": "worker", "version": "1.1.0", "description": "b"})
        a = (await call(admin, "agent_spawn", profile="worker@1.0.0"))["agent"]["id"]
        b = (await call(admin, "agent_spawn", profile="worker@1.1.0"))["agent"]["id"]
    return a, b


async def test_compare_finds_a_known_difference_significant(fake_connect, fake_time_services, clock):
    a, b = await _two_versions(fake_connect)
    # a: 60 of 100 complete, each in 10-19.9 s; b: 85 of 100 complete, each in 1-1.99 s.
    outcomes_a = [("completed" if i < 60 else "failed", 10 + i / 10) for i in range(100)]
    outcomes_b = [("completed" if i < 85 else "failed", 1 + i / 100) for i in range(100)]
    versions_with(fake_time_services, a, b, clock.now_us(), outcomes_a, outcomes_b)
    async with fake_connect() as admin:
        result = await call(admin, "profile_compare", name="worker", version_a="1.0.0", version_b="1.1.0", period="1d")
    assert (result["a"]["success_rate"], result["b"]["success_rate"]) == (0.6, 0.85)
    assert result["difference"]["success_rate"] == pytest.approx(0.25)
    # pooled 0.725, se = sqrt(0.725 * 0.275 * (1/100 + 1/100)) = 0.063147, z = 0.25 / se = 3.959
    success = result["success_rate_test"]
    assert success["test"] == "two-proportion z-test" and success["statistic"] == pytest.approx(3.959, abs=1e-3)
    assert success["p_value"] == pytest.approx(math.erfc(3.959 / math.sqrt(2)), rel=1e-3) and success["significant"]
    durations = result["run_time_test"]
    assert durations["test"].startswith("Mann-Whitney U") and durations["statistic"] == 0.0  # every b is faster
    assert durations["p_value"] < 1e-6 and durations["significant"]
    assert result["verdict"].startswith("1.1.0 completes 25.0 percentage points more of its tasks than 1.0.0")
    assert "two-proportion z-test: significant" in result["verdict"]


async def test_compare_says_when_a_difference_is_not_significant(fake_connect, fake_time_services, clock):
    a, b = await _two_versions(fake_connect)
    outcomes_a = [("completed" if i % 2 else "failed", 5 + (i % 7)) for i in range(100)]
    outcomes_b = [("completed" if i % 2 or i < 4 else "failed", 5 + ((i + 3) % 7)) for i in range(100)]
    versions_with(fake_time_services, a, b, clock.now_us(), outcomes_a, outcomes_b)
    async with fake_connect() as admin:
        result = await call(admin, "profile_compare", name="worker", version_a="1.0.0", version_b="1.1.0", period="1d")
        empty = await call(admin, "profile_compare", name="worker", version_a="1.0.0", version_b="1.1.0", period="1h")
    assert (result["a"]["success_rate"], result["b"]["success_rate"]) == (0.5, 0.52)
    assert result["success_rate_test"]["p_value"] > 0.5 and not result["success_rate_test"]["significant"]
    assert result["run_time_test"]["p_value"] > 0.5 and not result["run_time_test"]["significant"]
    assert "2.0 percentage points more" in result["verdict"] and "not significant" in result["verdict"]
    assert empty["verdict"].startswith("Nothing to compare")
    assert empty["success_rate_test"]["p_value"] is None


def test_the_tests_agree_with_values_worked_by_hand():
    # a = [1, 2, 3], b = [4, 5, 6]: U_b = 15 - 6 = 9, mean 4.5, variance 9/12 * 7 = 5.25,
    # z = (4.5 - 0.5) / sqrt(5.25) = 1.7457, p = 0.0809
    test = rank_test([1, 2, 3], [4, 5, 6])
    assert test.statistic == 9 and test.p_value == pytest.approx(0.0809, abs=1e-4) and not test.significant
    assert rank_test([1, 1, 1], [1, 1]).p_value == 1.0
    assert rank_test([], [1.0]).p_value is None
    even = proportion_test(5, 10, 5, 10)
    assert even.statistic == 0 and even.p_value == 1.0
    assert proportion_test(10, 10, 10, 10).p_value == 1.0
