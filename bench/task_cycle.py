"""Task-engine throughput: submit -> claim -> complete cycles per second, through the service layer
and beside a raw-driver baseline doing the same rows, measured in one run.

    python bench/task_cycle.py [--cycles 3000] [--warmup 200] [--rounds 2]
                               [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
                               [--pg-cycles 1000] [--pg-workers 4] [--no-pg]
                               [--parts sqlite_service,sqlite_raw,pg_service,pg_raw]

Parts (each round uses a fresh store; rounds alternate which of a pair goes first; the JSON
reports every round and the median):

- sqlite_service: in-process, services.tasks.submit / services.leases.claim(wait_s=0) /
  services.leases.complete on SQLite (WAL, synchronous=NORMAL), one agent of profile `worker`,
  one coroutine, uvloop. Goals: >= 1,500 cycles/s and >= 0.5 x sqlite_raw.
- sqlite_raw: stdlib sqlite3 on a file created by the project's migrations (same tables, indexes,
  triggers-free schema, PRAGMAs as the store sets them: WAL, synchronous=NORMAL, foreign_keys=ON),
  BEGIN IMMEDIATE per operation, doing the same rows per cycle:
    submit   INSERT task (RETURNING *), INSERT audit (each audit row: the chain's head read and hashed,
             under the chain's advisory lock on PostgreSQL, as the service does), INSERT event
    claim    UPDATE agent (touch, RETURNING caps/max), COUNT held, SELECT head of queue (the
             service's own SQL, json_each subset test), conditional UPDATE task (RETURNING *),
             INSERT attempt, INSERT audit, INSERT event
    complete conditional UPDATE task (RETURNING *), UPDATE attempt, INSERT audit, INSERT event
- pg_service: the service layer on PostgreSQL, N workers (default 4) as asyncio tasks in one
  process, each with its own agent, each looping submit -> claim -> complete. Goal >= 1,000 cycles/s.
- pg_raw: psycopg 3, N threads each with its own connection, the same rows per cycle as
  sqlite_raw plus the pg_notify the service sends on submit and with each event, claims with FOR UPDATE SKIP LOCKED.

PostgreSQL: --pg-url names the server (its database part is only used to connect); each part runs
in a scratch database created, migrated and dropped here. Unreachable -> PG parts are skipped and
the JSON says why.

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
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
    summarise_ns,
)

note = make_note("task_cycle")

ADMIN_TOKEN = "afk_bench-task-cycle-admin-token-0000000000000"
SQLITE_GOAL_CPS = 1500.0
SQLITE_GOAL_RATIO = 0.5
PG_GOAL_CPS = 1000.0
ALL_PARTS = ("sqlite_service", "sqlite_raw", "pg_service", "pg_raw")
LIVE = ("starting", "active", "unresponsive", "stopping")
MICROS = 1_000_000


# -- service layer ---------------------------------------------------------------------------------


def _settings(data_dir: Path, database_url: str | None):  # noqa: ANN202
    from server.settings import Settings

    return Settings(data_dir=data_dir, database_url=database_url, profiles_dir=TEST_PROFILES, log_level="warning")


async def _service_run(
    database_url: str | None, data_dir: Path, workers: int, cycles: int, warmup: int
) -> dict[str, Any]:
    import asyncio

    from server.domain.principal import ADMIN
    from server.domain.task_spec import TaskSpec
    from server.services.container import build_services

    services = build_services(_settings(data_dir, database_url), ADMIN_TOKEN)
    try:
        principals = []
        for _ in range(workers):
            spawned = await services.agents.spawn(ADMIN, "worker")
            principal = await services.auth.authenticate(spawned.token)
            assert principal is not None
            principals.append(principal)
        lat: dict[str, list[int]] = {"submit": [], "claim": [], "complete": []}
        empty_claims = 0
        stolen = 0

        async def worker(principal: Any, n: int, record: bool, base: int) -> None:
            nonlocal empty_claims, stolen
            clock = time.perf_counter_ns
            for i in range(n):
                t0 = clock()
                view = await services.tasks.submit(ADMIN, TaskSpec(type="bench", payload={"n": base + i}))
                t1 = clock()
                while True:
                    claimed = await services.leases.claim(principal, wait_s=0)
                    if claimed.task is not None:
                        break
                    empty_claims += 1  # only possible with several workers; retried, and counted
                t2 = clock()
                await services.leases.complete(principal, claimed.task.id, {"ok": True})
                t3 = clock()
                if claimed.task.id != view.id:
                    stolen += 1
                if record:
                    lat["submit"].append(t1 - t0)
                    lat["claim"].append(t2 - t1)
                    lat["complete"].append(t3 - t2)

        per_worker_warm = max(1, warmup // workers)
        await asyncio.gather(*(worker(p, per_worker_warm, False, k * 10_000_000) for k, p in enumerate(principals)))
        per_worker = cycles // workers
        cpu0, started = time.process_time(), time.perf_counter()
        await asyncio.gather(
            *(worker(p, per_worker, True, k * 10_000_000 + per_worker_warm) for k, p in enumerate(principals))
        )
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
        done = per_worker * workers
        _verify_service(services, done + per_worker_warm * workers)
        return {
            "cycles": done,
            "workers": workers,
            "seconds": round(elapsed, 3),
            "cycles_per_s": round(done / elapsed, 1),
            "process_cpu_us_per_cycle": round(cpu / done * 1e6, 1),
            "per_op": {op: summarise_ns(samples) for op, samples in lat.items()},
            "empty_claims_retried": empty_claims,
            "claimed_another_workers_task": stolen,
        }
    finally:
        services.close()


def _verify_service(services: Any, expected: int) -> None:
    from sqlalchemy import func, select

    from server.store.tables import tasks

    with services.db.engine.connect() as conn:
        counts = dict(conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all())
    if counts != {"completed": expected}:
        raise RuntimeError(f"service run left tasks {counts}, expected {expected} completed")


def run_service(database_url: str | None, workers: int, cycles: int, warmup: int) -> dict[str, Any]:
    import anyio

    data_dir = Path(tempfile.mkdtemp(prefix="agentfleet-bench-cycle-"))
    try:
        return anyio.run(
            _service_run,
            database_url,
            data_dir,
            workers,
            cycles,
            warmup,
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# -- raw SQL: shared logic --------------------------------------------------------------------------


class RawStore:
    """Same rows per cycle as the service layer, written directly against the DB-API driver."""

    def __init__(self, dialect: str) -> None:
        from server.store.dialect import json_subset

        self.dialect = dialect
        ph = (lambda name: f":{name}") if dialect == "sqlite" else (lambda name: f"%({name})s")
        self.ph = ph
        live = ", ".join(f"'{s}'" for s in LIVE)
        self.touch_agent = (
            f"UPDATE orch_agents SET last_heartbeat_at = {ph('now')}, status = 'active' "
            f"WHERE id = {ph('me')} AND status IN ({live}) RETURNING capabilities, max_concurrency"
        )
        self.held = f"SELECT count(*) FROM orch_tasks WHERE agent_id = {ph('me')} AND status = 'running'"
        candidate = (
            "SELECT id FROM orch_tasks WHERE status = 'queued' AND ready_at <= "
            + ph("now")
            + " AND (pinned_agent_id IS NULL OR pinned_agent_id = "
            + ph("me")
            + ") AND "
            + json_subset(dialect, "orch_tasks.capabilities", ph("caps"))
            + " ORDER BY dispatch_key, id LIMIT 1"
        )
        if dialect == "postgresql":
            candidate += " FOR UPDATE SKIP LOCKED"
        self.candidate = candidate
        lease_us = "CAST(lease_s AS BIGINT) * 1000000"
        self.take = (
            f"UPDATE orch_tasks SET status = 'running', agent_id = {ph('me')}, attempts = attempts + 1, "
            f"lease_expires_at = {ph('now')} + {lease_us}, "
            f"started_at = coalesce(started_at, {ph('now')}), updated_at = {ph('now')}, "
            f"progress = NULL, progress_message = NULL, unroutable = {ph('false')} "
            f"WHERE id = {ph('task_id')} AND status = 'queued' RETURNING *"
        )
        self.insert_attempt = (
            "INSERT INTO orch_task_attempts (task_id, number, agent_id, started_at) "
            f"VALUES ({ph('task_id')}, {ph('number')}, {ph('me')}, {ph('now')})"
        )
        self.insert_audit = (
            "INSERT INTO orch_audit (id, at, principal, role, action, subject, detail, chain, seq, prev_hash, hash) "
            f"VALUES ({ph('id')}, {ph('at')}, {ph('principal')}, {ph('role')}, {ph('action')}, "
            f"{ph('subject')}, {ph('detail')}, {ph('chain')}, {ph('seq')}, {ph('prev_hash')}, {ph('hash')})"
        )
        self.audit_head = f"SELECT seq, hash FROM orch_audit WHERE chain = {ph('chain')} ORDER BY seq DESC LIMIT 1"
        cols = (
            "id, type, payload, capabilities, priority, status, pinned_agent_id, submitted_by, created_at, "
            "updated_at, attempts, max_attempts, cancel_requested, idempotency_key, spec_hash, ready_at, "
            "dispatch_key, lease_s, backoff_base_ms, backoff_cap_ms, unroutable, has_locks"
        )
        self.insert_task = (
            f"INSERT INTO orch_tasks ({cols}) VALUES ("
            + ", ".join(ph(c.strip()) for c in cols.split(","))
            + ") RETURNING *"
        )
        self.complete = (
            f"UPDATE orch_tasks SET status = 'completed', result = {ph('result')}, usage = NULL, "
            f"finished_at = {ph('now')}, updated_at = {ph('now')}, lease_expires_at = NULL, "
            f"progress = 100 WHERE id = {ph('task_id')} AND status = 'running' "
            f"AND agent_id = {ph('me')} AND lease_expires_at > {ph('now')} RETURNING *"
        )
        self.end_attempt = (
            f"UPDATE orch_task_attempts SET ended_at = {ph('now')}, outcome = 'completed', "
            f"error = NULL WHERE task_id = {ph('task_id')} AND number = {ph('number')}"
        )
        self.notify = "SELECT pg_notify('agentfleet_tasks', %(payload)s)"
        tx = "0" if dialect == "sqlite" else "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)"
        self.insert_event = (
            "INSERT INTO orch_event_log (tx, id, at, type, subject, actor, agent_id, owner, depth, data) "
            f"VALUES ({tx}, {ph('id')}, {ph('at')}, {ph('type')}, {ph('subject')}, {ph('actor')}, "
            f"{ph('agent_id')}, {ph('owner')}, 0, {ph('data')})"
        )
        self.insert_agent = (
            "INSERT INTO orch_agents (id, name, profile, profile_version, runtime, capabilities, parent_id, depth, "
            "status, token_hash, created_by, created_at, labels, max_concurrency) VALUES ("
            + ", ".join(
                ph(c)
                for c in (
                    "id",
                    "name",
                    "profile",
                    "version",
                    "runtime",
                    "caps",
                    "parent",
                    "depth",
                    "status",
                    "token_hash",
                    "created_by",
                    "now",
                    "labels",
                    "max_concurrency",
                )
            )
            + ")"
        )

    def json(self, value: Any) -> Any:
        if self.dialect == "postgresql":
            from psycopg.types.json import Json

            return Json(value)
        return json.dumps(value)

    def agent_params(self, now: int) -> dict[str, Any]:
        from server.ids import AGENT, new_id

        agent_id = new_id(AGENT)
        return {
            "id": agent_id,
            "name": f"worker-{agent_id[-6:].lower()}",
            "profile": "worker",
            "version": "1.0.0",
            "runtime": "external",
            "caps": self.json(["general"]),
            "parent": None,
            "depth": 0,
            "status": "starting",
            "token_hash": hashlib.sha256(agent_id.encode()).hexdigest(),
            "created_by": "admin",
            "now": now,
            "labels": self.json({}),
            "max_concurrency": 64,
        }

    def task_params(self, n: int, now: int) -> dict[str, Any]:
        from server.ids import TASK, new_id

        payload = {"n": n}
        spec = json.dumps(
            {
                "type": "bench",
                "payload": payload,
                "capabilities": [],
                "priority": "normal",
                "max_attempts": 3,
                "lease_s": 60,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return {
            "id": new_id(TASK),
            "type": "bench",
            "payload": self.json(payload),
            "capabilities": self.json([]),
            "priority": 2,
            "status": "queued",
            "pinned_agent_id": None,
            "submitted_by": "admin",
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "max_attempts": 3,
            "cancel_requested": False,
            "idempotency_key": None,
            "spec_hash": hashlib.sha256(spec.encode()).hexdigest(),
            "ready_at": now,
            "dispatch_key": 2 * 600 * MICROS + now,
            "lease_s": 60,
            "backoff_base_ms": 1000,
            "backoff_cap_ms": 300000,
            "unroutable": False,
            "has_locks": False,
        }

    def audit(
        self, cur: Any, now: int, principal: str, role: str, action: str, subject: str, detail: dict[str, Any]
    ) -> None:
        """The audit row, chained as the service chains it: take a chain's turn, read its head, hash."""
        from server.domain.audit_chain import CHAINS_PG, GENESIS, row_hash
        from server.ids import EVENT, new_id

        chain = 0
        if self.dialect == "postgresql":
            chain = random.randrange(CHAINS_PG)
            cur.execute("SELECT pg_advisory_xact_lock(7340222, %(chain)s)", {"chain": chain})
        cur.execute(self.audit_head, {"chain": chain})
        head = cur.fetchone()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        row = {
            "id": new_id(EVENT),
            "at": now,
            "principal": principal,
            "role": role,
            "action": action,
            "subject": subject,
            "detail": detail,
            "chain": chain,
            "seq": seq,
            "prev_hash": prev,
            # Unset on these rows, as on the service's (no reason given, no row digests on this path).
            "reason": None,
            "before_digest": None,
            "after_digest": None,
        }
        cur.execute(self.insert_audit, {**row, "detail": self.json(detail), "hash": row_hash(row)})

    def event(self, cur: Any, now: int, kind: str, subject: str, actor: str, agent_id: str | None, data: Any) -> None:
        """The event row the service appends (and, on PostgreSQL, the NOTIFY that announces it)."""
        from server.ids import EVENT, new_id

        params = {"id": new_id(EVENT), "at": now, "type": kind, "subject": subject, "actor": actor}
        params.update(agent_id=agent_id, owner="admin", data=json.dumps(data, separators=(",", ":")))
        cur.execute(self.insert_event, params)
        if self.dialect == "postgresql":
            cur.execute("SELECT pg_notify('agentfleet_events', '{}')")

    # One operation = the statements of one transaction; `cur` is a cursor inside it.
    def submit_tx(self, cur: Any, n: int, now: int) -> Any:
        params = self.task_params(n, now)
        cur.execute(self.insert_task, params)
        row = cur.fetchone()
        if self.dialect == "postgresql":
            cur.execute(
                self.notify, {"payload": json.dumps({"o": "raw", "c": [], "p": None, "r": now}, separators=(",", ":"))}
            )
        self.audit(cur, now, "admin", "admin", "task.submit", params["id"], {"type": "bench"})
        data = {"type": "bench", "priority": "normal", "status": "queued", "capabilities": []}
        self.event(cur, now, "task.submitted", params["id"], "admin", None, data)
        return row

    def claim_tx(self, cur: Any, me: str, now: int) -> Any:
        cur.execute(self.touch_agent, {"me": me, "now": now})
        agent = cur.fetchone()
        if agent is None:
            raise RuntimeError("agent not live")
        caps = agent[0] if not isinstance(agent[0], str) else json.loads(agent[0])
        cur.execute(self.held, {"me": me})
        if cur.fetchone()[0] >= agent[1]:
            return None
        cur.execute(self.candidate, {"now": now, "me": me, "caps": json.dumps(sorted(caps))})
        candidate = cur.fetchone()
        if candidate is None:
            return None
        cur.execute(self.take, {"task_id": candidate[0], "me": me, "now": now, "false": False})
        row = cur.fetchone()
        if row is None:
            return None
        task_id, attempts = row[0], row[15]  # id, attempts (column order of orch_tasks)
        cur.execute(self.insert_attempt, {"task_id": task_id, "number": attempts, "me": me, "now": now})
        self.audit(cur, now, me, "agent", "task.claim", task_id, {"attempt": attempts})
        self.event(cur, now, "task.claimed", task_id, me, me, {"type": "bench", "attempt": attempts})
        return row

    def complete_tx(self, cur: Any, me: str, task_id: str, now: int) -> Any:
        cur.execute(self.complete, {"task_id": task_id, "me": me, "now": now, "result": self.json({"ok": True})})
        row = cur.fetchone()
        if row is None:
            raise RuntimeError(f"complete matched nothing for {task_id}")
        cur.execute(self.end_attempt, {"now": now, "task_id": task_id, "number": row[15]})
        self.audit(cur, now, me, "agent", "task.complete", task_id, {})
        data = {"type": "bench", "status": "completed", "attempts": row[15], "error": None}
        self.event(cur, now, "task.completed", task_id, me, me, data)
        return row


def _now_us() -> int:
    return time.time_ns() // 1000


def _check_column_order(columns: list[str]) -> None:
    if columns[0] != "id" or columns[15] != "attempts":
        raise RuntimeError(f"orch_tasks column order changed ({columns[:16]}); fix the raw baseline's indexes")


# -- raw SQLite ----------------------------------------------------------------------------------


def run_sqlite_raw(cycles: int, warmup: int) -> dict[str, Any]:
    from server.store import migrate
    from server.store.database import create_store_engine

    tmp = Path(tempfile.mkdtemp(prefix="agentfleet-bench-raw-"))
    path = tmp / "raw.db"
    try:
        engine = create_store_engine(f"sqlite:///{path}")
        try:
            migrate.upgrade(engine)  # the same schema: tables, partial indexes, checks, FKs
        finally:
            engine.dispose()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            _check_column_order([r[1] for r in conn.execute("PRAGMA table_info(orch_tasks)")])
            raw = RawStore("sqlite")
            cur = conn.cursor()
            agent = raw.agent_params(_now_us())
            cur.execute("BEGIN IMMEDIATE")
            cur.execute(raw.insert_agent, agent)
            cur.execute("COMMIT")
            me = agent["id"]
            lat: dict[str, list[int]] = {"submit": [], "claim": [], "complete": []}

            def tx(fn: Any, *args: Any) -> Any:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(cur, *args)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
                return out

            def loop(n: int, base: int, record: bool) -> None:
                clock = time.perf_counter_ns
                for i in range(n):
                    t0 = clock()
                    submitted = tx(raw.submit_tx, base + i, _now_us())
                    t1 = clock()
                    claimed = tx(raw.claim_tx, me, _now_us())
                    t2 = clock()
                    if claimed is None or claimed[0] != submitted[0]:
                        raise RuntimeError("raw claim did not get the task just submitted")
                    tx(raw.complete_tx, me, claimed[0], _now_us())
                    t3 = clock()
                    if record:
                        lat["submit"].append(t1 - t0)
                        lat["claim"].append(t2 - t1)
                        lat["complete"].append(t3 - t2)

            loop(warmup, 0, False)
            cpu0, started = time.process_time(), time.perf_counter()
            loop(cycles, warmup, True)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
            counts = dict(conn.execute("SELECT status, count(*) FROM orch_tasks GROUP BY status").fetchall())
            if counts != {"completed": cycles + warmup}:
                raise RuntimeError(f"raw run left tasks {counts}")
            return {
                "cycles": cycles,
                "workers": 1,
                "seconds": round(elapsed, 3),
                "cycles_per_s": round(cycles / elapsed, 1),
                "process_cpu_us_per_cycle": round(cpu / cycles * 1e6, 1),
                "per_op": {op: summarise_ns(samples) for op, samples in lat.items()},
            }
        finally:
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- raw PostgreSQL --------------------------------------------------------------------------------


def run_pg_raw(database_url: str, workers: int, cycles: int, warmup: int) -> dict[str, Any]:
    import psycopg
    from _common import _libpq

    dsn = _libpq(database_url)
    raw = RawStore("postgresql")
    agents = []
    with psycopg.connect(dsn) as conn:
        _check_column_order(
            [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'orch_tasks' "
                    "ORDER BY ordinal_position"
                )
            ]
        )
        with conn.cursor() as cur:
            for _ in range(workers):
                params = raw.agent_params(_now_us())
                cur.execute(raw.insert_agent, params)
                agents.append(params["id"])
        conn.commit()

    lat: dict[str, list[int]] = {"submit": [], "claim": [], "complete": []}
    lock = threading.Lock()
    empty = [0]
    errors: list[BaseException] = []
    start_gate = threading.Barrier(workers + 1)
    stop_gate = threading.Barrier(workers + 1)

    def worker(me: str, k: int, warm: int, n: int) -> None:
        try:
            with psycopg.connect(dsn) as conn, conn.cursor() as cur:
                local = {"submit": [], "claim": [], "complete": []}
                misses = 0

                def tx(fn: Any, *args: Any) -> Any:
                    try:
                        out = fn(cur, *args)
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
                    return out

                def loop(count: int, base: int, record: bool) -> None:
                    nonlocal misses
                    clock = time.perf_counter_ns
                    for i in range(count):
                        t0 = clock()
                        tx(raw.submit_tx, base + i, _now_us())
                        t1 = clock()
                        while True:
                            claimed = tx(raw.claim_tx, me, _now_us())
                            if claimed is not None:
                                break
                            misses += 1
                        t2 = clock()
                        tx(raw.complete_tx, me, claimed[0], _now_us())
                        t3 = clock()
                        if record:
                            local["submit"].append(t1 - t0)
                            local["claim"].append(t2 - t1)
                            local["complete"].append(t3 - t2)

                loop(warm, k * 10_000_000, False)
                start_gate.wait()
                loop(n, k * 10_000_000 + warm, True)
                stop_gate.wait()
                with lock:
                    for op, samples in local.items():
                        lat[op].extend(samples)
                    empty[0] += misses
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)
            start_gate.abort()
            stop_gate.abort()

    per_worker_warm = max(1, warmup // workers)
    per_worker = cycles // workers
    threads = [
        threading.Thread(target=worker, args=(me, k, per_worker_warm, per_worker), daemon=True)
        for k, me in enumerate(agents)
    ]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    try:
        start_gate.wait()
        cpu0, started = time.process_time(), time.perf_counter()
        stop_gate.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    except threading.BrokenBarrierError:
        elapsed, cpu = float("nan"), float("nan")
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise RuntimeError(f"raw PG worker failed: {errors[0]!r}") from errors[0]
    done = per_worker * workers
    with psycopg.connect(dsn) as conn:
        counts = dict(conn.execute("SELECT status, count(*) FROM orch_tasks GROUP BY status").fetchall())
    if counts != {"completed": done + per_worker_warm * workers}:
        raise RuntimeError(f"raw PG run left tasks {counts}")
    return {
        "cycles": done,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "cycles_per_s": round(done / elapsed, 1),
        "process_cpu_us_per_cycle": round(cpu / done * 1e6, 1),
        "per_op": {op: summarise_ns(samples) for op, samples in lat.items()},
        "empty_claims_retried": empty[0],
    }


# -- driver ----------------------------------------------------------------------------------------


def _median_of(rounds: list[dict[str, Any]]) -> float:
    return round(statistics.median(r["cycles_per_s"] for r in rounds), 1)


def _brief(result: dict[str, Any]) -> str:
    ops = result["per_op"]
    return (
        f"{result['cycles_per_s']} cycles/s over {result['cycles']} cycles, "
        f"{result['process_cpu_us_per_cycle']} us client CPU/cycle "
        f"(p50 submit {ops['submit']['p50_ms']} / claim {ops['claim']['p50_ms']} / "
        f"complete {ops['complete']['p50_ms']} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3000, help="measured cycles per SQLite run (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured cycles before each run (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each part, alternating order (default 2)")
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_SERVER,
        help="PostgreSQL server to create scratch databases on (default %(default)s)",
    )
    parser.add_argument("--pg-cycles", type=int, default=1000, help="measured cycles per PostgreSQL run (default 1000)")
    parser.add_argument("--pg-workers", type=int, default=4, help="concurrent workers on PostgreSQL (default 4)")
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL parts")
    parser.add_argument("--parts", default=",".join(ALL_PARTS), help="comma list of " + ", ".join(ALL_PARTS))
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in ALL_PARTS for p in parts):
        parser.error(f"--parts takes a comma list of {', '.join(ALL_PARTS)}")
    if min(args.cycles, args.pg_cycles, args.rounds, args.pg_workers) < 1 or args.warmup < 0:
        parser.error("--cycles, --pg-cycles, --rounds, --pg-workers must be >= 1 and --warmup >= 0")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "task_cycle",
        "rounds": args.rounds,
        "warmup_cycles": args.warmup,
        "loadavg_at_start": load_average(),
    }
    sqlite_parts = [p for p in ("sqlite_service", "sqlite_raw") if p in parts]
    if sqlite_parts:
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in sqlite_parts}
        for r in range(args.rounds):
            order = sqlite_parts if r % 2 == 0 else list(reversed(sqlite_parts))
            for part in order:
                if part == "sqlite_service":
                    result = run_service(None, 1, args.cycles, args.warmup)
                else:
                    result = run_sqlite_raw(args.cycles, args.warmup)
                runs[part].append(result)
                note(f"round {r + 1} {part}: {_brief(result)}")
        sqlite: dict[str, Any] = {"cycles": args.cycles}
        for part, results in runs.items():
            sqlite[part.removeprefix("sqlite_")] = {"median_cycles_per_s": _median_of(results), "rounds": results}
        if "service" in sqlite:
            service = sqlite["service"]["median_cycles_per_s"]
            goals: dict[str, Any] = {
                "cycles_per_s_goal": SQLITE_GOAL_CPS,
                "cycles_per_s_met": service >= SQLITE_GOAL_CPS,
            }
            if "raw" in sqlite:
                ratio = service / sqlite["raw"]["median_cycles_per_s"]
                goals.update(
                    service_to_raw=round(ratio, 3), ratio_goal=SQLITE_GOAL_RATIO, ratio_met=ratio >= SQLITE_GOAL_RATIO
                )
            goals["met"] = all(v for k, v in goals.items() if k.endswith("_met"))
            sqlite["goals"] = goals
        out["sqlite"] = sqlite

    pg_parts = [p for p in ("pg_service", "pg_raw") if p in parts]
    if pg_parts:
        why_not = "disabled with --no-pg" if args.no_pg else pg_reachable(args.pg_url)
        if why_not is not None:
            note(f"PostgreSQL parts skipped: {why_not}")
            out["postgresql"] = {"skipped": why_not}
        else:
            pg_runs: dict[str, list[dict[str, Any]]] = {p: [] for p in pg_parts}
            for r in range(args.rounds):
                order = pg_parts if r % 2 == 0 else list(reversed(pg_parts))
                for part in order:
                    with pg_scratch_database(args.pg_url, part.removeprefix("pg_")) as url:
                        if part == "pg_service":
                            result = run_service(url, args.pg_workers, args.pg_cycles, args.warmup)
                        else:
                            result = run_pg_raw(url, args.pg_workers, args.pg_cycles, args.warmup)
                    pg_runs[part].append(result)
                    note(f"round {r + 1} {part}: {_brief(result)}")
            pg: dict[str, Any] = {
                "cycles": args.pg_cycles,
                "workers": args.pg_workers,
                "server": args.pg_url.rsplit("@", 1)[-1],
            }
            for part, results in pg_runs.items():
                pg[part.removeprefix("pg_")] = {"median_cycles_per_s": _median_of(results), "rounds": results}
            if "service" in pg:
                service = pg["service"]["median_cycles_per_s"]
                goals = {"cycles_per_s_goal": PG_GOAL_CPS, "cycles_per_s_met": service >= PG_GOAL_CPS}
                if "raw" in pg:
                    goals["service_to_raw"] = round(service / pg["raw"]["median_cycles_per_s"], 3)
                goals["met"] = goals["cycles_per_s_met"]
                pg["goals"] = goals
            out["postgresql"] = pg

    out["goals_met"] = all(
        section["goals"]["met"]
        for section in (out.get("sqlite"), out.get("postgresql"))
        if isinstance(section, dict) and "goals" in section
    )
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
