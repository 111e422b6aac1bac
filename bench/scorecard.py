"""Scorecard and profile_compare latency at a large number of finished tasks, and what a spawn's
profile resolution costs.

    python bench/scorecard.py [--tasks 100000] [--agents 200] [--repeat 20] [--database-url URL]

A fresh temporary SQLite store (or the --database-url given: use a scratch database, rows are
added to it) is migrated and filled with --tasks finished tasks spread over --agents agents, half of
profile bench@1.0.0 and half of bench@1.1.0, over the last 14 days, two task types, a usage row for
every tenth task and feedback for every twentieth. Then each query runs --repeat times through the
service (ScorecardService, as the tools call it): scorecard for one agent, one profile version, the
profile name and one task type (7d with the 7d before), and profile_compare of the two versions.
`resolve` is ProfileRegistry.choose on an unchanged registry, plus the revision check a spawn makes.

stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, make_note, summarise_ns  # noqa: E402
from server.clock import MICROS, SystemClock  # noqa: E402
from server.domain.principal import ADMIN  # noqa: E402
from server.domain.profile import ProfileState  # noqa: E402
from server.services.profiles import ProfileRegistry  # noqa: E402
from server.services.scorecards import ScorecardService  # noqa: E402
from server.store import migrate  # noqa: E402
from server.store.database import Database, create_store_engine  # noqa: E402
from server.store.tables import agents, profiles, task_feedback, tasks, usage  # noqa: E402

note = make_note("scorecard")
DAY = 86_400 * MICROS
BATCH = 20_000


def fill(db: Database, n_tasks: int, n_agents: int, now: int) -> list[str]:
    rng = random.Random(24)
    definition = {"name": "bench", "description": "bench"}
    agent_ids = [f"agt_0BENCH{i:06d}" for i in range(n_agents)]
    with db.engine.begin() as conn:
        for revision, version in enumerate(("1.0.0", "1.1.0"), start=10_000_000):
            conn.execute(
                profiles.insert().values(
                    name="bench",
                    version=version,
                    definition=definition | {"version": version},
                    state=ProfileState.ACTIVE.value,
                    source="registered",
                    created_by="bench",
                    created_at=now,
                    updated_at=now,
                    revision=revision,
                )
            )
        conn.execute(
            agents.insert(),
            [
                {
                    "id": agent_id,
                    "name": agent_id,
                    "profile": "bench",
                    "profile_version": "1.0.0" if i % 2 else "1.1.0",
                    "runtime": "external",
                    "capabilities": [],
                    "depth": 0,
                    "status": "active",
                    "created_by": "bench",
                    "created_at": now,
                    "labels": {},
                    "max_concurrency": 1,
                }
                for i, agent_id in enumerate(agent_ids)
            ],
        )
    for start in range(0, n_tasks, BATCH):
        rows, spend, opinions = [], [], []
        for i in range(start, min(n_tasks, start + BATCH)):
            finished = now - rng.randrange(14 * DAY)
            run = rng.randrange(100_000, 30 * MICROS)
            wait = rng.randrange(1_000, 5 * MICROS)
            status = rng.choices(("completed", "failed", "dead"), (85, 10, 5))[0]
            task_id = f"tsk_0BENCH{i:09d}"
            rows.append(
                {
                    "id": task_id,
                    "type": "review" if i % 3 else "build",
                    "payload": {},
                    "capabilities": [],
                    "priority": 2,
                    "status": status,
                    "agent_id": agent_ids[i % n_agents],
                    "submitted_by": "bench",
                    "created_at": finished - run - wait,
                    "updated_at": finished,
                    "started_at": finished - run,
                    "finished_at": finished,
                    "attempts": 1 + (status != "completed"),
                    "max_attempts": 3,
                    "cancel_requested": False,
                    "spec_hash": "0" * 64,
                    "ready_at": finished - run - wait,
                    "dispatch_key": finished,
                    "lease_s": 60,
                    "backoff_base_ms": 1000,
                    "backoff_cap_ms": 300_000,
                    "unroutable": False,
                    "has_locks": False,
                    "executable": False,
                }
            )
            if i % 10 == 0:
                spend.append(
                    {
                        "id": f"use_0BENCH{i:09d}",
                        "at": finished,
                        "agent_id": agent_ids[i % n_agents],
                        "task_id": task_id,
                        "task_type": "review",
                        "model": "m",
                        "input_tokens": 1,
                        "output_tokens": 1,
                        "cached_input_tokens": 0,
                        "cost_micros": rng.randrange(1, 50_000),
                        "priced_by": "caller",
                        "scopes": [],
                    }
                )
            if i % 20 == 0:
                opinions.append(
                    {
                        "task_id": task_id,
                        "principal": "ops",
                        "role": "operator",
                        "good": None,
                        "score": rng.randrange(1, 6),
                        "note": None,
                        "tags": [],
                        "created_at": finished,
                        "updated_at": finished,
                    }
                )
        with db.engine.begin() as conn:
            conn.execute(tasks.insert(), rows)
            conn.execute(usage.insert(), spend)
            conn.execute(task_feedback.insert(), opinions)
        note(f"{min(n_tasks, start + BATCH)} tasks")
    return agent_ids


async def timed(repeat: int, run) -> dict:  # noqa: ANN001
    samples = []
    for _ in range(repeat):
        began = time.perf_counter_ns()
        await run()
        samples.append(time.perf_counter_ns() - began)
    return summarise_ns(sorted(samples))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        db = Database(engine)
        clock = SystemClock()
        began = time.monotonic()
        agent_ids = fill(db, args.tasks, args.agents, clock.now_us())
        filled_s = time.monotonic() - began
        service = ScorecardService(db, clock)
        registry = ProfileRegistry()
        registry.attach(db)
        await registry.refresh()
        results = {
            "scorecard_agent": await timed(args.repeat, lambda: service.scorecard(ADMIN, f"agent:{agent_ids[0]}")),
            "scorecard_version": await timed(args.repeat, lambda: service.scorecard(ADMIN, "profile:bench@1.1.0")),
            "scorecard_profile": await timed(args.repeat, lambda: service.scorecard(ADMIN, "profile:bench")),
            "scorecard_task_type": await timed(args.repeat, lambda: service.scorecard(ADMIN, "task_type:build")),
            "compare": await timed(args.repeat, lambda: service.compare(ADMIN, "bench", "1.0.0", "1.1.0")),
        }

        async def resolve() -> None:
            await registry.refresh()
            registry.choose("bench@^1")

        results["resolve_with_revision_check"] = await timed(args.repeat * 10, resolve)
        db.dispose()
        engine.dispose()
    print(
        json.dumps(
            {
                "bench": "scorecard",
                "store": "sqlite" if url.startswith("sqlite") else "postgresql",
                "tasks": args.tasks,
                "agents": args.agents,
                "fill_s": round(filled_s, 2),
                "latency_ms": results,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
