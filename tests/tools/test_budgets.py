"""Budgets through the MCP client: hard and soft limits, holds, the usage ledger, roll-up through the
agent tree, profile and pool scopes, thresholds, periods on a fake clock, dispatch and spawn."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import PG_URL
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

DAY = 86_400


async def spawn(client, profile="worker", **extra):
    return await call(client, "agent_spawn", profile=profile, **extra)


def aid(spawned):
    return spawned["agent"]["id"]


async def report(client, scope):
    (found,) = (await call(client, "budget_status", scope=scope))["budgets"]
    return found


async def budget(client, scope):
    return (await report(client, scope))["budget"]


async def spend(client, cost, **extra):
    return await call(
        client, "usage_record", model="claude-sonnet-4-5", input_tokens=0, output_tokens=0, cost_usd=cost, **extra
    )


async def claim(agent):
    return (await call(agent, "task_claim"))["task"]


async def test_reserve_fits_or_changes_nothing_and_release_returns_the_rest(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        fleet = await call(admin, "budget_set", scope="global", limit_usd="100")
        mine = await call(admin, "budget_set", scope=f"agent:{aid(a)}", limit_usd="10")
        assert fleet["id"] < mine["id"]  # global is reserved first, so a refusal must roll it back
        assert mine["limit_usd"] == "10.000000" and mine["enforcement"] == "hard" and mine["period"] == "total"
        assert mine["spent_usd"] == "0.000000" and mine["remaining_usd"] == "10.000000"
    async with fake_connect(a["token"]) as agent:
        hold = await call(agent, "budget_reserve", amount_usd="6", ttl_s=60, purpose="a long prompt")
        assert hold["status"] == "held" and hold["amount_usd"] == "6.000000" and hold["holder"] == aid(a)
        assert hold["budgets"] == sorted(["global", f"agent:{aid(a)}"])
        refused = await call_error(agent, "budget_reserve", amount_usd="4.000001")
        assert refused.code == "budget_exceeded" and f"agent:{aid(a)}" in refused.text
    async with fake_connect() as admin:
        after = await budget(admin, f"agent:{aid(a)}")
        assert (after["reserved_usd"], after["remaining_usd"], after["spent_usd"]) == (
            "6.000000",
            "4.000000",
            "0.000000",
        )
        assert (await budget(admin, "global"))["reserved_usd"] == "6.000000"
    async with fake_connect(a["token"]) as agent:
        exact = await call(agent, "budget_reserve", amount_usd="4")  # exactly up to the limit fits
        assert (await budget(agent, f"agent:{aid(a)}"))["remaining_usd"] == "0.000000"
        released = await call(agent, "budget_release", hold_id=hold["id"])
        assert released["status"] == "settled" and released["spent_usd"] == "0.000000" and released["ended_at"]
        await call(agent, "budget_release", hold_id=exact["id"])
        after = await budget(agent, f"agent:{aid(a)}")
        assert (after["reserved_usd"], after["spent_usd"]) == ("0.000000", "0.000000")

        drawn_from = await call(agent, "budget_reserve", amount_usd="4")
        receipt = await spend(agent, "1.5", hold_id=drawn_from["id"])
        assert receipt["hold_id"] == drawn_from["id"] and receipt["drawn_from_hold_usd"] == "1.500000"
        during = await budget(agent, f"agent:{aid(a)}")
        assert (during["spent_usd"], during["reserved_usd"]) == ("1.500000", "2.500000")
        assert (await call(agent, "budget_release", hold_id=drawn_from["id"]))["spent_usd"] == "1.500000"
        settled = await budget(agent, f"agent:{aid(a)}")
        assert (settled["spent_usd"], settled["reserved_usd"], settled["remaining_usd"]) == (
            "1.500000",
            "0.000000",
            "8.500000",
        )
        again = await call(agent, "budget_release", hold_id=drawn_from["id"])  # the same call answers the same
        assert again["status"] == "settled" and again["spent_usd"] == "1.500000"
        assert (await budget(agent, "global"))["spent_usd"] == "1.500000"


async def test_spend_rolls_up_the_agent_tree_and_an_ancestor_limit_binds(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        await call(admin, "budget_set", scope=f"agent:{aid(a)}", limit_usd="10")
    async with fake_connect(a["token"]) as parent:
        b = await spawn(parent)
        assert b["agent"]["parent_id"] == aid(a)
        await call(parent, "budget_set", scope=f"agent:{aid(b)}", limit_usd="50")
    async with fake_connect(b["token"]) as middle:
        c = await spawn(middle)
        own = await call(middle, "budget_set", scope=f"agent:{aid(c)}", limit_usd="100")
        assert own["limit_usd"] == "100.000000"
    async with fake_connect(c["token"]) as grandchild:
        receipt = await spend(grandchild, "3")
        assert {s["scope"] for s in receipt["budgets"]} == {f"agent:{x}" for x in (aid(a), aid(b), aid(c))}
    async with fake_connect() as admin:
        for who in (a, b, c):
            assert (await budget(admin, f"agent:{aid(who)}"))["spent_usd"] == "3.000000"
        assert (await report(admin, f"agent:{aid(a)}"))["by_agent"] == {aid(c): "3.000000"}
    async with fake_connect(c["token"]) as grandchild:
        refused = await call_error(grandchild, "budget_reserve", amount_usd="7.5")
        assert refused.code == "budget_exceeded" and f"agent:{aid(a)}" in refused.text
        assert (await budget(grandchild, f"agent:{aid(c)}"))["reserved_usd"] == "0.000000"
        fits = await call(grandchild, "budget_reserve", amount_usd="7")
        assert fits["budgets"] == sorted(f"agent:{x}" for x in (aid(a), aid(b), aid(c)))
    async with fake_connect(a["token"]) as parent:  # the parent sees its own and its descendants' budgets
        seen = {r["budget"]["scope"]: r["budget"] for r in (await call(parent, "budget_status"))["budgets"]}
        assert set(seen) == {f"agent:{x}" for x in (aid(a), aid(b), aid(c))}
        assert seen[f"agent:{aid(a)}"]["remaining_usd"] == "0.000000"
        assert seen[f"agent:{aid(b)}"]["reserved_usd"] == "7.000000"


async def test_profile_and_pool_scopes_count_only_their_members(fake_connect):
    async with fake_connect() as admin:
        for scope in ("pool:gpu", "profile:worker", "profile:default"):
            await call(admin, "budget_set", scope=scope, limit_usd="10")
        assert (await call_error(admin, "budget_set", scope="profile:nosuch", limit_usd="1")).code == "invalid_input"
        in_pool = await spawn(admin, pools=["gpu"])
        outside = await spawn(admin)
        other_profile = await spawn(admin, profile="default")
        assert in_pool["agent"]["pools"] == ["gpu"] and outside["agent"]["pools"] == []
    async with fake_connect(in_pool["token"]) as agent:
        await spend(agent, "1")
    async with fake_connect(outside["token"]) as agent:
        await spend(agent, "2")
    async with fake_connect(other_profile["token"]) as agent:
        await spend(agent, "4")
    async with fake_connect() as admin:
        assert (await budget(admin, "pool:gpu"))["spent_usd"] == "1.000000"
        assert (await budget(admin, "profile:worker"))["spent_usd"] == "3.000000"
        assert (await budget(admin, "profile:default"))["spent_usd"] == "4.000000"
        assert (await report(admin, "pool:gpu"))["by_agent"] == {aid(in_pool): "1.000000"}
    async with fake_connect(in_pool["token"]) as agent:
        refused = await call_error(agent, "budget_reserve", amount_usd="9.5")  # the pool has 9 left
        assert refused.code == "budget_exceeded" and "pool:gpu" in refused.text
        scopes = {r["budget"]["scope"] for r in (await call(agent, "budget_status"))["budgets"]}
        assert scopes == {"pool:gpu", "profile:worker"}
    async with fake_connect(outside["token"]) as agent:
        hold = await call(agent, "budget_reserve", amount_usd="6")  # not in the pool: only profile:worker binds
        assert hold["budgets"] == ["profile:worker"]
        assert (await call_error(agent, "budget_status", scope="pool:gpu")).code == "not_found"


async def test_each_threshold_crossing_is_recorded_once_per_period(fake_connect, clock):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10", period="daily")
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "5")
        assert (await report(agent, scope))["events"] == []
        first = await call(agent, "budget_reserve", amount_usd="2.5")  # 75%: crosses 70
        seen = await report(agent, scope)
        assert [(e["percent"], e["action"], e["committed_usd"]) for e in seen["events"]] == [(70, "notify", "7.500000")]
        assert [(t["percent"], t["crossed"]) for t in seen["budget"]["thresholds"]] == [
            (70, True),
            (90, False),
            (100, False),
        ]
        await call(agent, "budget_release", hold_id=first["id"])  # back to 50%
        assert (await budget(agent, scope))["percent"] == 50.0
        second = await call(agent, "budget_reserve", amount_usd="2.5")  # crosses 70 again: no new event
        assert [e["id"] for e in (await report(agent, scope))["events"]] == [seen["events"][0]["id"]]
        await spend(agent, "2")  # 95%: crosses 90 once
        events = (await report(agent, scope))["events"]
        assert [(e["percent"], e["action"]) for e in events] == [(70, "notify"), (90, "warn")]
        await call(agent, "budget_release", hold_id=second["id"])
        await call(agent, "budget_reserve", amount_usd="2.5")  # 70 and 90 again, same period: nothing new
        assert (await report(agent, scope))["events"] == events

    clock.advance(DAY)  # 2026-01-02: a new period, nothing crossed in it yet
    async with fake_connect(a["token"]) as agent:
        fresh = await report(agent, scope)
        assert fresh["budget"]["period_start"] == "2026-01-02T00:00:00Z"
        assert fresh["budget"]["spent_usd"] == "0.000000"
        assert fresh["events"] == [] and not any(t["crossed"] for t in fresh["budget"]["thresholds"])
        assert fresh["budget"]["reserved_usd"] == "2.500000"  # the open hold still counts
        await spend(agent, "4.4")  # 4.4 + 2.5 = 69%
        assert (await report(agent, scope))["events"] == []
        await spend(agent, "0.1")  # 70%: crossed again, in the new period
        today = (await report(agent, scope))["events"]
        assert [(e["percent"], e["committed_usd"]) for e in today] == [(70, "7.000000")]
        assert today[0]["id"] not in {e["id"] for e in events}


async def test_usage_is_priced_from_the_table_exactly_and_rounded_up(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="100")
    async with fake_connect(a["token"]) as agent:
        tokens = {"input_tokens": 1000, "cached_input_tokens": 2000, "output_tokens": 500}
        # 1000 x $3/M + 2000 x $0.30/M + 500 x $15/M = 0.003 + 0.0006 + 0.0075
        priced = await call(agent, "usage_record", model="claude-sonnet-4-5", **tokens)
        assert (priced["cost_usd"], priced["priced_by"], priced["model"]) == (
            "0.011100",
            "price_table",
            "claude-sonnet-4-5",
        )
        dated = await call(agent, "usage_record", model="claude-sonnet-4-5-20250929", **tokens)
        assert (dated["cost_usd"], dated["priced_by"]) == ("0.011100", "price_table")
        assert dated["model"] == "claude-sonnet-4-5-20250929"
        given = await call(agent, "usage_record", model="claude-sonnet-4-5", cost_usd="0.5", **tokens)
        assert (given["cost_usd"], given["priced_by"]) == ("0.500000", "caller")
        own_model = await call(agent, "usage_record", model="in-house-7b", input_tokens=5, output_tokens=5, cost_usd=0)
        assert own_model["cost_usd"] == "0.000000" and own_model["priced_by"] == "caller"
        # 1 cached token of claude-haiku-4-5 at $0.10/M is 0.0000001 USD: never under-counted
        tiny = await call(
            agent, "usage_record", model="claude-haiku-4-5", input_tokens=0, output_tokens=0, cached_input_tokens=1
        )
        assert tiny["cost_usd"] == "0.000001"
        exact = await call(agent, "usage_record", model="claude-haiku-4-5", input_tokens=3, output_tokens=0)
        assert exact["cost_usd"] == "0.000003"  # a whole number of micro-dollars is not rounded up
        before = await report(agent, scope)
        for unknown in ("mystery-model-9", "claude-opus-4-7"):
            failure = await call_error(agent, "usage_record", model=unknown, input_tokens=10, output_tokens=10)
            assert failure.code == "invalid_input" and unknown in failure.text
        after = await report(agent, scope)
        assert after["budget"]["spent_usd"] == before["budget"]["spent_usd"] == "0.522204"
        assert after["by_model"] == {
            "claude-sonnet-4-5": "0.511100",
            "claude-sonnet-4-5-20250929": "0.011100",
            "claude-haiku-4-5": "0.000004",
            "in-house-7b": "0.000000",
        }
    async with fake_connect() as admin:  # usage is an agent's: the admin has none to record
        refused = await call_error(admin, "usage_record", model="gpt-5", input_tokens=1, output_tokens=1)
        assert refused.code == "permission_denied" and "usage_record is for agent" in refused.text


async def test_periods_reset_on_utc_day_and_month_boundaries(fake_connect, clock):
    async with fake_connect() as admin:
        a = await spawn(admin, pools=["late"])
        daily, monthly, total = f"agent:{aid(a)}", "profile:worker", "global"
        await call(admin, "budget_set", scope=daily, limit_usd="100", period="daily")
        await call(admin, "budget_set", scope=monthly, limit_usd="100", period="monthly")
        await call(admin, "budget_set", scope=total, limit_usd="100")

    async def spent():
        async with fake_connect() as admin:
            return [(await budget(admin, s))["spent_usd"] for s in (daily, monthly, total)]

    clock.advance(10 * 3600)  # 2026-01-01T10:00Z
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "1")
    assert await spent() == ["1.000000", "1.000000", "1.000000"]
    clock.advance(14 * 3600 - 1)  # 23:59:59, still the 1st
    assert await spent() == ["1.000000", "1.000000", "1.000000"]
    clock.advance(1)  # 2026-01-02T00:00Z
    assert await spent() == ["0.000000", "1.000000", "1.000000"]
    async with fake_connect(a["token"]) as agent:
        receipt = await spend(agent, "2")
        assert {s["scope"]: s["spent_usd"] for s in receipt["budgets"]}[daily] == "2.000000"
        day_view = await budget(agent, daily)
        assert (day_view["period_start"], day_view["period_end"]) == ("2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z")
        month_view = await budget(agent, monthly)
        assert (month_view["period_start"], month_view["period_end"]) == (
            "2026-01-01T00:00:00Z",
            "2026-02-01T00:00:00Z",
        )
        assert (await budget(agent, total))["period_end"] is None
    assert await spent() == ["2.000000", "3.000000", "3.000000"]
    clock.advance(30 * DAY - 1)  # 2026-01-31T23:59:59Z
    assert await spent() == ["0.000000", "3.000000", "3.000000"]
    clock.advance(1)  # 2026-02-01: the month is over
    assert await spent() == ["0.000000", "0.000000", "3.000000"]

    clock.advance(5 * 3600)
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "4")
    assert await spent() == ["4.000000", "4.000000", "7.000000"]
    async with fake_connect() as admin:  # set after the spend: this period's spend counts at once
        late = await call(admin, "budget_set", scope="pool:late", limit_usd="10", period="monthly")
        assert (late["spent_usd"], late["remaining_usd"]) == ("4.000000", "6.000000")
        whole = await call(admin, "budget_set", scope="pool:late", limit_usd="10", period="total")
        assert whole["spent_usd"] == "7.000000"  # switching the period recounts from the ledger
        switched = await call(admin, "budget_set", scope=daily, limit_usd="100", period="monthly")
        assert switched["spent_usd"] == "4.000000"
        same = await call(admin, "budget_set", scope=monthly, limit_usd="50", period="monthly")
        assert (same["spent_usd"], same["limit_usd"]) == ("4.000000", "50.000000")
        crossed = await call(admin, "budget_set", scope="pool:late", limit_usd="8", period="total")
        assert [t["percent"] for t in crossed["thresholds"] if t["crossed"]] == [70]
        assert [e["percent"] for e in (await report(admin, "pool:late"))["events"]] == [70]


async def test_expired_holds_return_their_money_and_can_be_settled_late_once(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10")
    async with fake_connect(a["token"]) as agent:
        hold = await call(agent, "budget_reserve", amount_usd="4", ttl_s=60)
        assert hold["expires_at"] == "2026-01-01T00:01:00Z"
        await spend(agent, "1", hold_id=hold["id"])
        clock.advance(59)
        assert await fake_time_services.budgets.sweep() == 0
        assert (await budget(agent, scope))["reserved_usd"] == "3.000000"
        clock.advance(1)
        assert await fake_time_services.budgets.sweep() == 1
        assert await fake_time_services.budgets.sweep() == 0
        after = await budget(agent, scope)
        assert (after["reserved_usd"], after["spent_usd"]) == ("0.000000", "1.000000")
        expired = await call(agent, "budget_release", hold_id=hold["id"])
        assert (expired["status"], expired["spent_usd"], expired["drawn_usd"]) == ("expired", "1.000000", "1.000000")
        late = await call_error(
            agent, "usage_record", model="gpt-5", input_tokens=1, output_tokens=1, hold_id=hold["id"]
        )
        assert late.code == "conflict"
        too_little = await call_error(agent, "budget_release", hold_id=hold["id"], actual_usd="0.5")
        assert too_little.code == "invalid_input"
        settled = await call(agent, "budget_release", hold_id=hold["id"], actual_usd="2.5")
        assert (settled["status"], settled["spent_usd"]) == ("settled", "2.500000")
        charged = await budget(agent, scope)
        assert (charged["spent_usd"], charged["reserved_usd"]) == ("2.500000", "0.000000")
        same = await call(agent, "budget_release", hold_id=hold["id"], actual_usd="2.5")
        assert same["spent_usd"] == "2.500000"
        other = await call_error(agent, "budget_release", hold_id=hold["id"], actual_usd="3")
        assert other.code == "conflict"
        assert (await budget(agent, scope))["spent_usd"] == "2.500000"
        assert (await report(agent, scope))["by_model"] == {"settlement": "1.500000", "claude-sonnet-4-5": "1.000000"}


async def test_dispatch_sets_the_estimate_aside_and_the_attempt_end_settles_it(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10")
        task = await call(admin, "task_submit", type="summarize", estimated_cost_usd="4")
        assert (await call(admin, "task_get", task_id=task["id"]))["estimated_cost_usd"] == "4.000000"
    async with fake_connect(a["token"]) as agent:
        leased = await claim(agent)
        assert leased["id"] == task["id"] and leased["estimated_cost_usd"] == "4.000000"
        assert (await budget(agent, scope))["reserved_usd"] == "4.000000"
        receipt = await spend(agent, "1.5", task_id=task["id"])
        assert receipt["drawn_from_hold_usd"] == "1.500000" and receipt["hold_id"] is not None
        during = await budget(agent, scope)
        assert (during["spent_usd"], during["reserved_usd"]) == ("1.500000", "2.500000")
        await call(agent, "task_complete", task_id=task["id"], result="ok")
        done = await report(agent, scope)
        assert (done["budget"]["spent_usd"], done["budget"]["reserved_usd"]) == ("1.500000", "0.000000")
        assert done["by_task_type"] == {"summarize": "1.500000"}
        hold = await call(agent, "budget_release", hold_id=receipt["hold_id"])
        assert (hold["status"], hold["task_id"], hold["spent_usd"]) == ("settled", task["id"], "1.500000")


async def test_a_failed_or_lapsed_attempt_settles_its_hold_too(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10")
        task = await call(
            admin, "task_submit", type="t", estimated_cost_usd="3", lease_s=10, backoff_base_s=1, backoff_cap_s=1
        )
    async with fake_connect(a["token"]) as agent:
        await claim(agent)
        await spend(agent, "1", task_id=task["id"])
        failed = await call(agent, "task_fail", task_id=task["id"], error="flaky")
        assert failed["status"] == "queued"
        after = await budget(agent, scope)
        assert (after["spent_usd"], after["reserved_usd"]) == ("1.000000", "0.000000")
        clock.advance(1)
        assert (await claim(agent))["attempts"] == 2
        assert (await budget(agent, scope))["reserved_usd"] == "3.000000"
        clock.advance(11)
        assert await fake_time_services.leases.reap_once() == 1
        lapsed = await budget(agent, scope)
        assert (lapsed["spent_usd"], lapsed["reserved_usd"]) == ("1.000000", "0.000000")


async def test_a_claim_whose_estimate_does_not_fit_leaves_the_task_for_another_agent(fake_connect):
    async with fake_connect() as admin:
        poor, rich = await spawn(admin), await spawn(admin)
        await call(admin, "budget_set", scope=f"agent:{aid(poor)}", limit_usd="3")
        await call(admin, "budget_set", scope=f"agent:{aid(rich)}", limit_usd="5")
        task = await call(admin, "task_submit", type="t", estimated_cost_usd="4")
    async with fake_connect(poor["token"]) as agent:
        refused = await call_error(agent, "task_claim")
        assert refused.code == "budget_exceeded" and f"agent:{aid(poor)}" in refused.text
        assert (await budget(agent, f"agent:{aid(poor)}"))["reserved_usd"] == "0.000000"
    async with fake_connect() as admin:
        still = await call(admin, "task_get", task_id=task["id"])
        assert (still["status"], still["attempts"], still["agent_id"]) == ("queued", 0, None)
        assert still["attempt_history"] == []
    async with fake_connect(rich["token"]) as agent:
        taken = await claim(agent)
        assert taken["id"] == task["id"] and taken["agent_id"] == aid(rich)
        assert (await budget(agent, f"agent:{aid(rich)}"))["reserved_usd"] == "4.000000"


async def test_a_hard_budget_at_its_block_threshold_stops_dispatch_and_spawn_but_not_reserve(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10", thresholds=[{"percent": 50, "action": "block"}])
        plain = await call(admin, "task_submit", type="t")
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "4.9")
        assert (await budget(agent, scope))["blocked"] is False
        await spend(agent, "1.1")  # 60%
        view = await budget(agent, scope)
        assert view["blocked"] is True and view["percent"] == 60.0
        refused = await call_error(agent, "task_claim")
        assert refused.code == "budget_exceeded" and scope in refused.text
        no_child = await call_error(agent, "agent_spawn", profile="worker")
        assert no_child.code == "budget_exceeded"
    async with fake_connect() as admin:
        assert (await call(admin, "task_get", task_id=plain["id"]))["status"] == "queued"
        by_admin = await call_error(admin, "agent_spawn", profile="worker", parent_id=aid(a))
        assert by_admin.code == "budget_exceeded"
        assert (await call(admin, "agent_get", agent_id=aid(a)))["children"] == []
    async with fake_connect(a["token"]) as agent:
        hold = await call(agent, "budget_reserve", amount_usd="4")  # reserving still works up to the limit
        assert hold["status"] == "held"
        assert (await call_error(agent, "budget_reserve", amount_usd="0.000001")).code == "budget_exceeded"
    async with fake_connect() as admin:  # raising the limit unblocks
        await call(admin, "budget_set", scope=scope, limit_usd="100", thresholds=[{"percent": 50, "action": "block"}])
    async with fake_connect(a["token"]) as agent:
        assert (await claim(agent))["id"] == plain["id"]
        await spawn(agent)


async def test_a_soft_budget_never_refuses(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="1", enforcement="soft")
        task = await call(admin, "task_submit", type="t", estimated_cost_usd="50")
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "5")
        hold = await call(agent, "budget_reserve", amount_usd="10")
        assert hold["budgets"] == [scope]
        assert (await claim(agent))["id"] == task["id"]
        await spawn(agent)
        seen = await report(agent, scope)
        assert seen["budget"]["blocked"] is False and seen["budget"]["percent"] == 6500.0
        assert seen["budget"]["remaining_usd"] == "0.000000"
        assert [e["percent"] for e in seen["events"]] == [70, 90, 100]


async def test_terminated_agents_spend_nothing_more_their_holds_settle_at_what_they_drew(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10")
    async with fake_connect(a["token"]) as parent:
        child = await spawn(parent)
    async with fake_connect(a["token"]) as agent:
        mine = await call(agent, "budget_reserve", amount_usd="3", ttl_s=3600)
        await spend(agent, "1", hold_id=mine["id"])
    async with fake_connect(child["token"]) as agent:
        theirs = await call(agent, "budget_reserve", amount_usd="4", ttl_s=3600)
        await spend(agent, "0.25")
    async with fake_connect() as admin:
        assert (await budget(admin, scope))["reserved_usd"] == "6.000000"
        await call(admin, "agent_terminate", agent_id=aid(a), cascade=True)
        after = await budget(admin, scope)
        assert (after["spent_usd"], after["reserved_usd"]) == ("1.250000", "0.000000")
        ended = await call(admin, "budget_release", hold_id=mine["id"])
        assert (ended["status"], ended["spent_usd"]) == ("settled", "1.000000")
        assert (await call(admin, "budget_release", hold_id=theirs["id"]))["spent_usd"] == "0.000000"


async def test_agents_budget_only_their_descendants_and_see_only_their_own_budgets(fake_connect):
    async with fake_connect() as admin:
        a, sibling = await spawn(admin), await spawn(admin)
        for scope in ("global", "profile:worker", f"agent:{aid(a)}", f"agent:{aid(sibling)}"):
            await call(admin, "budget_set", scope=scope, limit_usd="100")
        foreign_task = await call(admin, "task_submit", type="t")
        queued_task = await call(
            admin, "task_submit", type="t", pinned_agent_id=aid(a), not_before="2027-01-01T00:00:00Z"
        )
    async with fake_connect(a["token"]) as agent:
        child = await spawn(agent)
        for scope in ("global", f"agent:{aid(a)}", f"agent:{aid(sibling)}", "profile:worker", "pool:gpu"):
            denied = await call_error(agent, "budget_set", scope=scope, limit_usd="1")
            assert denied.code == "permission_denied", scope
        await call(agent, "budget_set", scope=f"agent:{aid(child)}", limit_usd="5")
        assert (
            await call_error(agent, "budget_set", scope="agent:agt_00000000000000000000000000", limit_usd="1")
        ).code in (
            "not_found",
            "permission_denied",
        )
        seen = {r["budget"]["scope"] for r in (await call(agent, "budget_status"))["budgets"]}
        assert seen == {"global", "profile:worker", f"agent:{aid(a)}", f"agent:{aid(child)}"}
        assert (await call_error(agent, "budget_status", scope=f"agent:{aid(sibling)}")).code == "not_found"
    async with fake_connect(child["token"]) as agent:
        seen = {r["budget"]["scope"] for r in (await call(agent, "budget_status"))["budgets"]}
        assert seen == {"global", "profile:worker", f"agent:{aid(a)}", f"agent:{aid(child)}"}
    async with fake_connect(sibling["token"]) as other:
        theirs = await call(other, "budget_reserve", amount_usd="2")
        assert (await claim(other))["id"] == foreign_task["id"]
    async with fake_connect(a["token"]) as agent:
        assert (await call_error(agent, "budget_release", hold_id=theirs["id"])).code == "permission_denied"
        denied = await call_error(agent, "budget_release", hold_id=theirs["id"], actual_usd="0")
        assert denied.code == "permission_denied"
        for task_id in (foreign_task["id"], queued_task["id"]):
            denied = await call_error(
                agent, "usage_record", model="gpt-5", input_tokens=1, output_tokens=1, task_id=task_id
            )
            assert denied.code == "permission_denied"
        assert (await budget(agent, f"agent:{aid(a)}"))["spent_usd"] == "0.000000"
    async with fake_connect() as admin:
        still = await budget(admin, f"agent:{aid(sibling)}")
        assert (still["reserved_usd"], still["spent_usd"]) == ("2.000000", "0.000000")
        assert (await budget(admin, "global"))["spent_usd"] == "0.000000"


async def test_fleet_status_shows_each_budgets_percent(fake_connect):
    async with fake_connect() as admin:
        a = await spawn(admin)
        await call(admin, "budget_set", scope="global", limit_usd="10")
        await call(admin, "budget_set", scope=f"agent:{aid(a)}", limit_usd="4", period="daily")
        empty = {b["scope"]: b for b in (await call(admin, "fleet_status"))["budgets"]}
        assert {s: b["percent"] for s, b in empty.items()} == {"global": 0.0, f"agent:{aid(a)}": 0.0}
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "2.5")
        await call(agent, "budget_reserve", amount_usd="1.5")
    async with fake_connect() as admin:
        shown = {b["scope"]: b for b in (await call(admin, "fleet_status"))["budgets"]}
    assert shown["global"]["percent"] == 40.0 and shown["global"]["blocked"] is False
    assert shown["global"]["spent_usd"] == "2.500000" and shown["global"]["reserved_usd"] == "1.500000"
    mine = shown[f"agent:{aid(a)}"]
    assert (mine["percent"], mine["blocked"], mine["period"], mine["limit_usd"]) == (100.0, True, "daily", "4.000000")


async def test_the_usage_ledger_is_immutable_in_the_store(connect, services):
    async with connect() as admin:
        a = await spawn(admin)
    async with connect(a["token"]) as agent:
        receipt = await spend(agent, "1.25")
    for statement in ("UPDATE orch_usage SET cost_micros = 0", "DELETE FROM orch_usage"):
        with pytest.raises(DBAPIError, match="immutable"), services.db.engine.begin() as conn:
            conn.execute(text(statement))
    with services.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, cost_micros FROM orch_usage")).all()
    assert [tuple(r) for r in rows] == [(receipt["id"], 1_250_000)]


async def agent_under_daily_budget(fake_connect, limit_usd):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd=limit_usd, period="daily")
    return a, scope


async def test_a_hold_carried_into_a_new_period_counts_toward_its_thresholds(fake_connect, clock):
    a, scope = await agent_under_daily_budget(fake_connect, "10")
    clock.advance(12 * 3600)
    async with fake_connect(a["token"]) as agent:
        await call(agent, "budget_reserve", amount_usd="8", ttl_s=DAY)  # 80% on the 1st
        assert [e["percent"] for e in (await report(agent, scope))["events"]] == [70]
    clock.advance(13 * 3600)  # 2026-01-02T01:00Z; the hold is still open
    async with fake_connect(a["token"]) as agent:
        await spend(agent, "1.5")  # 95% today
        today = await report(agent, scope)
    assert today["budget"]["percent"] == 95.0 and today["budget"]["period_start"] == "2026-01-02T00:00:00Z"
    crossed = [t["percent"] for t in today["budget"]["thresholds"] if t["crossed"]]
    assert crossed == [70, 90]  # at 95% of today's limit, today's 70% was reached too
    assert [e["percent"] for e in today["events"]] == [70, 90]


async def test_budget_set_in_a_new_period_records_its_crossings_in_that_period(fake_connect, clock):
    a, scope = await agent_under_daily_budget(fake_connect, "10")
    clock.advance(12 * 3600)
    async with fake_connect(a["token"]) as agent:
        await call(agent, "budget_reserve", amount_usd="5", ttl_s=DAY)  # 50%: nothing crossed on the 1st
    clock.advance(13 * 3600)  # the 2nd; nothing has written to the budget since
    async with fake_connect() as admin:
        lowered = await call(admin, "budget_set", scope=scope, limit_usd="6", period="daily")  # 5 of 6: 83%
        assert lowered["percent"] == 83.33
        assert [t["percent"] for t in lowered["thresholds"] if t["crossed"]] == [70]
        assert [e["percent"] for e in (await report(admin, scope))["events"]] == [70]


# Races between transactions on PostgreSQL (READ COMMITTED, many writer threads). The test holds a
# hold's row lock until every call under test has started and queued for that row, then lets them
# all go at once. SQLite runs one write transaction at a time, so these interleavings cannot happen
# there.
def pg_only(test):
    test = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)(test)
    return pytest.mark.skipif(not PG_URL, reason="set AGENTFLEET_TEST_DATABASE_URL=postgresql://… to run it")(test)


class RowGate:
    """Holds one hold row's lock until the expected number of transactions queue behind it."""

    def __init__(self, services, hold_id):
        self._engine = services.db.engine
        self._conn = self._engine.connect()
        self._tx = self._conn.begin()
        self._conn.execute(text("SELECT id FROM orch_budget_holds WHERE id = :id FOR UPDATE"), {"id": hold_id})

    async def until_waiting(self, count):
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        with anyio.fail_after(10), self._engine.connect() as watcher:
            while watcher.execute(waiting).scalar_one() < count:
                watcher.rollback()  # a new snapshot of pg_stat_activity each time
                await anyio.sleep(0.01)

    def open(self):
        if self._tx.is_active:
            self._tx.commit()
        self._conn.close()


async def call_as(fake_connect, token, tool, results, **arguments):
    async with fake_connect(token) as client:
        result = await client.call_tool(tool, arguments)
        results.append(result.content[0].text if result.is_error else result.structured_content)


def draw(fake_connect, token, results, hold_id, cost_usd):
    """A usage_record against hold_id, ready for a task group."""
    return partial(
        call_as,
        fake_connect,
        token,
        "usage_record",
        results,
        model="gpt-5",
        input_tokens=0,
        output_tokens=0,
        cost_usd=cost_usd,
        hold_id=hold_id,
    )


async def agent_with_holds(fake_connect, *amounts):
    """An agent under a 100 USD budget of its own, holding one hold per amount."""
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="100")
    async with fake_connect(a["token"]) as agent:
        holds = [await call(agent, "budget_reserve", amount_usd=amount) for amount in amounts]
    return a, scope, holds


@pg_only
async def test_concurrent_settlements_of_one_hold_charge_it_once(fake_connect, fake_time_services):
    a, scope, (hold,) = await agent_with_holds(fake_connect, "10")
    gate, results = RowGate(fake_time_services, hold["id"]), []
    async with anyio.create_task_group() as group:
        for _ in range(3):  # a client retrying a settlement it did not hear back from
            group.start_soon(
                partial(
                    call_as, fake_connect, a["token"], "budget_release", results, hold_id=hold["id"], actual_usd="3"
                )
            )
        try:
            await gate.until_waiting(3)
        finally:
            gate.open()
    assert [r["spent_usd"] for r in results] == ["3.000000"] * 3
    async with fake_connect() as admin:
        after = await budget(admin, scope)
    assert (after["spent_usd"], after["reserved_usd"]) == ("3.000000", "0.000000")


@pg_only
async def test_usage_drawn_from_a_hold_a_concurrent_release_ended_keeps_reserved_right(
    fake_connect, fake_time_services
):
    a, scope, (ending, _other) = await agent_with_holds(fake_connect, "10", "20")  # reserved stays above 0
    gate, results = RowGate(fake_time_services, ending["id"]), []
    async with anyio.create_task_group() as group:
        group.start_soon(partial(call_as, fake_connect, a["token"], "budget_release", results, hold_id=ending["id"]))
        try:
            await gate.until_waiting(1)  # the release reaches the hold's row first
            group.start_soon(draw(fake_connect, a["token"], results, ending["id"], "2"))
            await gate.until_waiting(2)
        finally:
            gate.open()
    async with fake_connect() as admin:
        after = await budget(admin, scope)
    assert after["spent_usd"] in ("0.000000", "2.000000"), results  # the usage recorded, or refused as conflict
    assert after["reserved_usd"] == "20.000000", results  # only the other hold is still open


@pg_only
async def test_concurrent_draws_never_take_more_than_the_hold_out_of_reserved(fake_connect, fake_time_services):
    a, scope, (shared, _other) = await agent_with_holds(fake_connect, "10", "20")
    gate, results = RowGate(fake_time_services, shared["id"]), []
    async with anyio.create_task_group() as group:
        for _ in range(2):
            group.start_soon(draw(fake_connect, a["token"], results, shared["id"], "8"))
        try:
            await gate.until_waiting(2)
        finally:
            gate.open()
    async with fake_connect(a["token"]) as agent:
        released = await call(agent, "budget_release", hold_id=shared["id"])
        after = await budget(agent, scope)
    assert released["drawn_usd"] == "10.000000", results  # 8 + 8 asked; the hold covers 10 of it
    assert (after["spent_usd"], after["reserved_usd"]) == ("16.000000", "20.000000"), results


async def test_spend_reported_past_a_hard_limit_is_recorded_flagged_and_blocks_the_scope(
    fake_connect, fake_time_services
):
    """The money was spent, so it is recorded; the ledger row says it went over, the scope takes no
    more reserve, dispatch or spawn, an event and an audit row say so, until the limit is raised."""
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="1")  # hard, no block threshold
        queued = await call(admin, "task_submit", type="t")
    async with fake_connect(a["token"]) as agent:
        hold = await call(agent, "budget_reserve", amount_usd="1")
        released = await call(agent, "budget_release", hold_id=hold["id"], actual_usd="123")  # a $1 hold
        assert released["spent_usd"] == "123.000000"
        view = await budget(agent, scope)
        assert view["spent_usd"] == "123.000000" and view["overspent"] is True and view["blocked"] is True
        await spend(agent, "5")  # more after-the-fact spend: recorded too
        assert (await budget(agent, scope))["spent_usd"] == "128.000000"
        for refused in (
            await call_error(agent, "budget_reserve", amount_usd="0.01"),
            await call_error(agent, "task_claim"),
            await call_error(agent, "agent_spawn", profile="worker"),
        ):
            assert refused.code == "budget_exceeded"
        assert "overspent" in (await call_error(agent, "task_claim")).text
    with fake_time_services.db.engine.connect() as conn:
        flags = dict(conn.execute(text("SELECT cost_micros, over_limit FROM orch_usage")).all())
        kinds = [k for (k,) in conn.execute(text("SELECT kind FROM orch_events WHERE kind = 'budget.overspent'"))]
    assert flags == {123_000_000: True, 5_000_000: True}
    assert kinds == ["budget.overspent"]  # once per budget and period
    async with fake_connect() as admin:
        audited = await call(admin, "audit_query", action="budget.overspent")
        assert len(audited["entries"]) == 2 and audited["entries"][0]["principal"] == aid(a)
        await call(admin, "budget_set", scope=scope, limit_usd="500")  # raising the limit unblocks
    async with fake_connect(a["token"]) as agent:
        assert (await budget(agent, scope))["overspent"] is False
        assert (await claim(agent))["id"] == queued["id"]


async def test_concurrent_reporters_past_a_hard_limit_are_all_recorded_and_flagged(fake_connect, fake_time_services):
    async with fake_connect() as admin:
        a = await spawn(admin)
        scope = f"agent:{aid(a)}"
        await call(admin, "budget_set", scope=scope, limit_usd="10")

    async def report_spend(cost: str) -> None:
        async with fake_connect(a["token"]) as agent:
            await spend(agent, cost)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(report_spend, "2")
    async with fake_connect(a["token"]) as agent:
        view = await budget(agent, scope)
    assert view["spent_usd"] == "16.000000" and view["overspent"] is True
    with fake_time_services.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT over_limit FROM orch_usage ORDER BY at, id")).scalars().all()
    assert len(rows) == 8 and sum(rows) == 3  # the spends that took it to 12, 14 and 16
