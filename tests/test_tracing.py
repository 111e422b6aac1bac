"""Traces, end to end: a real `agentfleet serve` and a real `agentfleet worker`, both exporting
over OTLP/HTTP (the `otel` extra) to a collector in this test, which keeps every span it is sent
(the in-memory exporter's role, across processes). One task through submit -> claim -> fail ->
retry -> complete is one trace: the caller's context, the submit span, each claim and attempt,
the worker's runs, the worker's tool calls and its command's TRACEPARENT."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from server.worker.client import FleetClient
from tests.conftest import TEST_PROFILES
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces (protobuf), spans kept in arrival order."""

    spans: list[ExportedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    exported = ExportedSpan(
                        service,
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        attributes,
                        span.status.code == 2,
                    )
                    with self.lock:
                        self.spans.append(exported)

    def in_trace(self, trace_id: str) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    kept = Collector()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            kept.add(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield kept, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def otel_env(endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}


async def test_one_task_through_a_retry_is_one_trace_with_the_workers_spans_inside(
    serve: ServeFactory, database_url: str, collector: tuple[Collector, str], tmp_path: Path
) -> None:
    kept, endpoint = collector
    server = serve(database_url, env={"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES), **otel_env(endpoint)})
    async with server.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="worker", capabilities=["flaky"])

    # The caller's own trace: the task joins it (MCP _meta.traceparent, as a sub-agent would send).
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    client = FleetClient(server.base_url, server.admin_token)
    try:
        task = await client.call(
            "task_submit",
            {"type": "flaky", "capabilities": ["flaky"], "max_attempts": 2, "backoff_base_s": 0.01},
            traceparent=f"00-{trace_id}-{caller_span}-01",
        )
    finally:
        await client.aclose()
    assert task["traceparent"].startswith(f"00-{trace_id}-")
    submit_span = task["traceparent"].split("-")[2]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLEET_", "OTEL_"))}
    env |= {"AGENTFLEET_URL": server.base_url, "AGENTFLEET_TOKEN": spawned["token"], **otel_env(endpoint)}
    log = tmp_path / "worker.stderr"
    with log.open("wb") as err:
        worker = subprocess.run(
            [sys.executable, "-m", "server.cli", "worker", "--wait-s", "2", "--max-tasks", "2", "--"]
            + [sys.executable, str(REPO_ROOT / "tests" / "agents" / "flaky.py")],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=60,
        )
    assert worker.returncode == 0, log.read_text()
    async with server.mcp() as admin:
        done = await call(admin, "task_get", task_id=task["id"])
    assert done["status"] == "completed" and done["attempts"] == 2, done
    server.stop()  # flushes the server's spans

    wanted = {"task.submit", "task.attempt 1", "task.attempt 2", "tools/call task_complete"}
    deadline = time.monotonic() + DEADLINE_S
    while not wanted <= {s.name for s in kept.in_trace(trace_id)}:
        assert time.monotonic() < deadline, f"spans never arrived: {[s.name for s in kept.in_trace(trace_id)]}"
        await anyio.sleep(0.05)
    spans = kept.in_trace(trace_id)
    by_name: dict[str, list[ExportedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    ids = {s.span_id: s for s in spans}

    # The caller's context -> the SDK's server span for its tool call -> the task's submit span.
    [submit] = by_name["task.submit"]
    assert submit.span_id == submit_span and submit.service == "agentfleet"
    assert ids[submit.parent_id].name == "tools/call task_submit"
    assert ids[submit.parent_id].parent_id in (caller_span, *ids)  # the HTTP span may sit between
    root = ids[submit.parent_id]
    while root.parent_id in ids:
        root = ids[root.parent_id]
    assert root.parent_id == caller_span

    # Each claim and each attempt hangs off the submit span; the first attempt failed.
    assert [s.parent_id for s in by_name["task.claim"]] == [submit_span, submit_span]
    assert by_name["task.claim"][0].attributes["agentfleet.agent.profile"].startswith("worker@")
    first, second = by_name["task.attempt 1"][0], by_name["task.attempt 2"][0]
    assert first.parent_id == second.parent_id == submit_span
    assert first.attributes["agentfleet.attempt.outcome"] == "failed" and first.error
    assert second.attributes["agentfleet.attempt.outcome"] == "completed" and not second.error
    assert second.attributes["agentfleet.agent.id"] == spawned["agent"]["id"]
    assert second.attributes["agentfleet.task.type"] == "flaky"

    # The worker's runs are in the trace too, and its calls for the task nest under them.
    runs = by_name["worker.run flaky"]
    assert len(runs) == 2 and {r.service for r in runs} == {"agentfleet-worker"}
    assert {r.parent_id for r in runs} == {submit_span}
    run_ids = {r.span_id for r in runs}
    assert ids[by_name["tools/call task_fail"][0].parent_id].span_id in run_ids
    assert _ancestor_in(by_name["tools/call task_complete"][0], ids, run_ids)
    assert _ancestor_in(by_name["tools/call task_log"][0], ids, run_ids)  # the first attempt's stderr line
    # The command got a TRACEPARENT in this trace, under its worker's run span.
    given = done["result"]["traceparent"].split("-")
    assert given[1] == trace_id and given[2] in run_ids

    # And the server's JSON log lines of those calls carry the trace id.
    records = [json.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]
    complete = next(r for r in records if r.get("kind") == "tool_call" and r["tool"] == "task_complete")
    assert complete["trace_id"] == trace_id


def _ancestor_in(span: ExportedSpan, ids: dict[str, ExportedSpan], wanted: set[str]) -> bool:
    while span.parent_id:
        if span.parent_id in wanted:
            return True
        if span.parent_id not in ids:
            return False
        span = ids[span.parent_id]
    return False


async def test_an_http_traceparent_header_joins_the_trace_and_no_otel_means_no_trace(
    serve: ServeFactory, database_url: str, collector: tuple[Collector, str]
) -> None:
    kept, endpoint = collector
    traced = serve(database_url, env=otel_env(endpoint))
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    async with traced.http(traced.admin_token) as http:
        answer = await http.get("/readyz", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert answer.status_code == 200
    # A workflow run in a caller's trace: its step's task joins that trace.
    run_trace = secrets.token_hex(16)
    client = FleetClient(traced.base_url, traced.admin_token)
    try:
        definition = {"name": "traced", "steps": [{"id": "one", "task": {"type": "research"}}]}
        run = await client.call(
            "workflow_run", {"definition": definition}, traceparent=f"00-{run_trace}-{secrets.token_hex(8)}-01"
        )
        step_task = next(s for s in run["steps"] if s["id"] == "one")["task_ids"][0]
        step = await client.call("task_get", {"task_id": step_task})
    finally:
        await client.aclose()
    assert step["traceparent"].split("-")[1] == run_trace
    traced.stop()
    deadline = time.monotonic() + DEADLINE_S
    while not kept.in_trace(trace_id):
        assert time.monotonic() < deadline, "the request's span never arrived"
        await anyio.sleep(0.05)
    [span] = kept.in_trace(trace_id)
    assert span.name == "GET /readyz" and span.parent_id == parent
    assert span.attributes["http.route"] == "/readyz"
    access = next(
        json.loads(line) for line in traced.stderr().splitlines() if '"kind": "access"' in line and "/readyz" in line
    )
    assert access["trace_id"] == trace_id

    plain = serve(database_url)  # the same store, no OTEL_* variables: tracing stays off
    async with plain.mcp() as admin:
        task = await call(admin, "task_submit", type="build", allow_unroutable=True)
    assert task["traceparent"] is None
