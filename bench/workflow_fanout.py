"""Workflow orchestration overhead per step, on a 1,000-step fan-out, in-process through the
service layer, beside the same number of plain tasks measured in the same run.

    python bench/workflow_fanout.py [--items 1000] [--rounds 3]
                                    [--pg-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-pg]

Each round, on a fresh store, times two things with one agent (profile `worker`) that claims and
completes every task as soon as it is queued:

- plain: `tasks.submit` of N tasks, then claim -> complete of each (what the work costs without a
  workflow: the task engine's own rows, audit rows and wake-ups).
- workflow: `workflows.run` of a definition whose first step fans out over N items and whose
  second joins them, then claim -> complete of the N step tasks and of the join.

overhead_ms_per_step = (workflow - plain) / N: what the workflow layer adds to each step (rendering
payloads, the run/step rows, the per-completion counter update under the run's row lock, and the
join's gathering of N results). Goal: under 5 ms per step. The JSON also splits the workflow time
into start (run creation and the N submissions in one transaction), drain (N completions) and join.

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_PG_SERVER,
    TEST_PROFILES,
    exit_on_sigterm,
    load_average,
    machine,
    make_note,
    pg_reachable,
    pg_scratch_database,
)

note = make_note("workflow_fanout")

ADMIN_TOKEN = "afk_bench-workflow-fanout-admin-token-000000000"
GOAL_MS_PER_STEP = 5.0


def fan_out(items: int) -> dict[str, Any]:
    return {
        "name": "bench-fan-out",
        "steps": [
            {
                "id": "each",
                "for_each": "{{ inputs.items }}",
                "task": {"type": "bench", "payload": {"n": "{{ item }}", "at": "{{ index }}"}},
            },
            {
                "id": "join",
                "depends_on": ["each"],
                "task": {"type": "join", "payload": {"parts": "{{ steps.each.result }}"}},
            },
        ],
        "inputs": {"items": {"type": "list"}},
    }


async def _drain(services: Any, agent: Any, count: int) -> None:
    for _ in range(count):
        claimed = await services.leases.claim(agent, wait_s=0)
        if claimed.task is None:
            raise RuntimeError("a task the bench expected was not claimable")
        await services.leases.complete(agent, claimed.task.id, {"n": claimed.task.payload.get("n")})


async def _round(database_url: str | None, data_dir: Path, items: int) -> dict[str, Any]:
    from server.domain.principal import ADMIN
    from server.domain.task_spec import TaskSpec
    from server.services.container import build_services
    from server.settings import Settings

    settings = Settings(data_dir=data_dir, database_url=database_url, profiles_dir=TEST_PROFILES, log_level="warning")
    services = build_services(settings, ADMIN_TOKEN)
    try:
        spawned = await services.agents.spawn(ADMIN, "worker")
        agent = await services.auth.authenticate(spawned.token)
        clock = time.perf_counter

        started = clock()
        for n in range(items):
            await services.tasks.submit(ADMIN, TaskSpec(type="bench", payload={"n": n}))
        await _drain(services, agent, items)
        plain = clock() - started

        started = clock()
        run_id = await services.workflows.run(ADMIN, fan_out(items), None, {"items": list(range(items))})
        begun = clock()
        await _drain(services, agent, items)
        drained = clock()
        await _drain(services, agent, 1)
        joined = clock()
        view = await services.workflows.get(ADMIN, run_id)
        if view.status != "completed" or len(view.steps[0].result) != items:
            raise RuntimeError(f"the run ended {view.status} with {len(view.steps[0].result or [])} results")
        workflow = joined - started
        return {
            "plain_s": round(plain, 3),
            "workflow_s": round(workflow, 3),
            "workflow_start_s": round(begun - started, 3),
            "workflow_drain_s": round(drained - begun, 3),
            "workflow_join_s": round(joined - drained, 3),
            "plain_ms_per_task": round(plain / items * 1000, 3),
            "workflow_ms_per_step": round(workflow / items * 1000, 3),
            "overhead_ms_per_step": round((workflow - plain) / items * 1000, 3),
        }
    finally:
        services.close()


def run_round(database_url: str | None, items: int) -> dict[str, Any]:
    import anyio

    data_dir = Path(tempfile.mkdtemp(prefix="agentfleet-bench-workflow-"))
    try:
        return anyio.run(_round, database_url, data_dir, items, backend="asyncio", backend_options={"use_uvloop": True})
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def store_result(label: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    median = statistics.median(r["overhead_ms_per_step"] for r in rounds)
    note(f"{label}: overhead per step {median} ms (median of {len(rounds)})")
    return {
        "rounds": rounds,
        "median_overhead_ms_per_step": median,
        "median_workflow_ms_per_step": statistics.median(r["workflow_ms_per_step"] for r in rounds),
        "goal_ms_per_step": GOAL_MS_PER_STEP,
        "meets_goal": median < GOAL_MS_PER_STEP,
    }


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=DEFAULT_PG_SERVER)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()

    report: dict[str, Any] = {"bench": "workflow_fanout", "items": args.items, "machine": machine()}
    sqlite_rounds = []
    for n in range(args.rounds):
        note(f"sqlite round {n + 1}/{args.rounds}")
        sqlite_rounds.append(run_round(None, args.items))
    report["sqlite"] = store_result("sqlite", sqlite_rounds)

    unreachable = None if args.no_pg else pg_reachable(args.pg_url)
    if args.no_pg or unreachable:
        report["postgresql"] = {"skipped": "--no-pg" if args.no_pg else unreachable}
    else:
        pg_rounds = []
        for n in range(args.rounds):
            note(f"postgresql round {n + 1}/{args.rounds}")
            with pg_scratch_database(args.pg_url, "workflow") as url:
                pg_rounds.append(run_round(url, args.items))
        report["postgresql"] = store_result("postgresql", pg_rounds)
    report["load_average"] = load_average()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
