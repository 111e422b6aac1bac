"""A2A against a real `agentfleet serve` from a second, independent client: @a2a-js/sdk (A2A 1.0,
JSON-RPC binding) run by Node from tests/a2a/js/client.mjs. The script prints one JSON object per
line for everything it observes (the card, each send and get answer, each stream event as it
arrives); this side asserts on them, acts as the agent over MCP while the JS stream is open, and
checks the orchestrator tasks over MCP. Skipped when node or npm is not installed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = "client.mjs"
SDK = "@a2a-js/sdk"
NPM_CI_TIMEOUT = 300.0
LINE_TIMEOUT = 20.0  # for one observation from the JS client
EXIT_TIMEOUT = 10.0
MAX_LINE = 1 << 20
BLOCK_S = 3.0  # AGENTFLEET_A2A_BLOCK_S, the server's default: how long a blocking SendMessage waits

REVIEW_SPEC = {"type": "review", "payload": {"pr": 7}, "capabilities": ["review"]}
RESULT = {"approved": True, "comments": ["tidy the imports"], "score": 9}


def pinned_sdk_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"][SDK]


def installed_sdk_version() -> str | None:
    manifest = JS_DIR / "node_modules" / SDK / "package.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text(encoding="utf-8"))["version"]


def node_modules_stale() -> bool:
    """No install, another SDK version than the pinned one, or a lockfile newer than the install."""
    marker = JS_DIR / "node_modules" / ".package-lock.json"  # npm writes it on every install
    if installed_sdk_version() != pinned_sdk_version() or not marker.exists():
        return True
    return marker.stat().st_mtime < (JS_DIR / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="session")
def js_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/a2a/js with its node_modules installed (`npm ci`, once per session: a file lock in the
    base temp dir, shared by the xdist workers, keeps two workers from installing at once)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the @a2a-js/sdk client test (not found on PATH)")
    lock_path = tmp_path_factory.getbasetemp().parent / "a2a-js-npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if node_modules_stale():
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
                    cwd=JS_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_CI_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"npm ci in {JS_DIR} did not finish within {NPM_CI_TIMEOUT:.0f} s")
            assert done.returncode == 0, f"npm ci failed in {JS_DIR}:\n{done.stdout}\n{done.stderr}"
    assert installed_sdk_version() == pinned_sdk_version()
    return JS_DIR


class JsRun:
    """One `node client.mjs STEP` process: its stdout read one JSON observation per line."""

    def __init__(self, process: Process, stderr_path: Path, step: str) -> None:
        assert process.stdout is not None
        self.process = process
        self.step = step
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._stderr_path = stderr_path

    def stderr(self) -> str:
        return self._stderr_path.read_text(encoding="utf-8", errors="replace")

    def fail(self, why: str) -> AssertionError:
        return AssertionError(f"JS client ({self.step}): {why}\n--- node stderr ---\n{self.stderr()}")

    async def next(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        """The next observation; the script's own failure report becomes an AssertionError."""
        try:
            with anyio.fail_after(timeout):
                line = await self._stdout.receive_until(b"\n", MAX_LINE)
        except TimeoutError:
            raise self.fail(f"no output within {timeout:.0f} s") from None
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise self.fail("exited before its next observation") from None
        observed = json.loads(line)
        if observed["kind"] == "error":
            raise self.fail(f"{observed['name']}: {observed['message']}\n{observed['stack']}")
        return observed

    async def expect(self, kind: str) -> dict[str, Any]:
        observed = await self.next()
        assert observed["kind"] == kind, observed
        return observed

    async def finish(self) -> None:
        """No more output, and a clean exit."""
        try:
            with anyio.fail_after(EXIT_TIMEOUT):
                rest = await self._stdout.receive()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            rest = b""
        except TimeoutError:
            raise self.fail(f"still running {EXIT_TIMEOUT:.0f} s after its last expected observation") from None
        assert not rest, f"unexpected output: {rest!r}"
        with anyio.fail_after(EXIT_TIMEOUT):
            code = await self.process.wait()
        if code != 0:
            raise self.fail(f"exit code {code}")


@asynccontextmanager
async def run_js(
    js_dir: Path,
    tmp_path: Path,
    server: FleetServer,
    step: str,
    *,
    token: str | None,
    spec: dict[str, Any] | None = None,
) -> AsyncIterator[JsRun]:
    """Start `node client.mjs STEP` against `server` with `token` (None: the bearer is omitted);
    the process is killed if the test leaves early."""
    env = {**os.environ, "A2A_BASE_URL": server.base_url, "A2A_TOKEN": token or "", "A2A_SPEC": json.dumps(spec or {})}
    stderr_path = tmp_path / f"node-{step}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [shutil.which("node") or "node", SCRIPT, step],
            cwd=js_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
        )
    async with process:
        try:
            yield JsRun(process, stderr_path, step)
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(EXIT_TIMEOUT):
                    await process.wait()


def state_of(task: dict[str, Any]) -> str:
    return task["status"]["state"]


async def test_the_js_client_discovers_the_agent_card_from_the_base_url(
    js_client: Path, shared_fleet: FleetServer, tmp_path: Path
) -> None:
    async with run_js(js_client, tmp_path, shared_fleet, "card", token=shared_fleet.admin_token) as js:
        card = (await js.expect("card"))["card"]
        client = await js.expect("client")
        await js.finish()
    assert card["name"] == "agentfleet orchestrator"
    assert card["capabilities"]["streaming"] is True
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"].lower() == "bearer"
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
    assert "submit-task" in {skill["id"] for skill in card["skills"]}
    # The SDK chose the card's JSON-RPC interface and speaks A2A 1.0 to it.
    assert client == {
        "kind": "client",
        "transport": "JSONRPC",
        "protocolVersion": "1.0",
        "endpoint": f"{shared_fleet.base_url}/a2a",
    }


async def test_the_js_client_sends_a_task_spec_and_gets_the_task(
    js_client: Path, shared_fleet: FleetServer, tmp_path: Path
) -> None:
    async with run_js(
        js_client, tmp_path, shared_fleet, "send-get", token=shared_fleet.admin_token, spec=REVIEW_SPEC
    ) as js:
        sent = await js.expect("send")  # returnImmediately: true
        fetched = await js.expect("get")
        blocking = await js.next(timeout=BLOCK_S + LINE_TIMEOUT)  # returnImmediately: false
        await js.finish()

    assert sent["resultType"] == "task", sent
    task = sent["task"]
    assert task["id"].startswith("tsk_") and state_of(task) == "TASK_STATE_SUBMITTED"
    assert sent["seconds"] < BLOCK_S - 0.5, "a returnImmediately send must not wait for the task"

    async with shared_fleet.mcp() as admin:
        orchestrated = await call(admin, "task_get", task_id=task["id"])
    assert orchestrated["id"] == task["id"] and orchestrated["status"] == "queued"
    assert orchestrated["type"] == "review" and orchestrated["capabilities"] == ["review"]
    assert orchestrated["payload"] == {"pr": 7} and type(orchestrated["payload"]["pr"]) is int
    assert orchestrated["submitted_by"] == "admin"

    got = fetched["task"]
    assert got["id"] == task["id"] and got["contextId"] == task["contextId"]
    assert state_of(got) == "TASK_STATE_SUBMITTED"

    # Blocking: the server waits up to AGENTFLEET_A2A_BLOCK_S for a final state that will not come
    # (nobody claims the task), then answers with the task as it stands.
    assert blocking["kind"] == "send-blocking" and blocking["resultType"] == "task", blocking
    assert state_of(blocking["task"]) == "TASK_STATE_SUBMITTED"
    assert blocking["task"]["id"] != task["id"]
    assert BLOCK_S - 0.5 <= blocking["seconds"] < BLOCK_S + LINE_TIMEOUT, blocking["seconds"]

    async with shared_fleet.mcp() as admin:  # leave no review work queued on the shared server
        for task_id in (task["id"], blocking["task"]["id"]):
            assert (await call(admin, "task_cancel", task_id=task_id))["status"] == "cancelled"


async def test_the_js_client_streams_a_task_from_submitted_to_completed(
    js_client: Path, serve: ServeFactory, database_url: str, tmp_path: Path
) -> None:
    server = serve(database_url)  # its own store: the agent below must claim this task, no other
    async with server.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="reviewer")
    async with (
        run_js(js_client, tmp_path, server, "stream", token=server.admin_token, spec=REVIEW_SPEC) as js,
        server.mcp(spawned["token"]) as agent,
    ):
        first = (await js.expect("event"))["event"]
        assert set(first) == {"task"}, first
        task = first["task"]
        assert task["id"].startswith("tsk_") and state_of(task) == "TASK_STATE_SUBMITTED"

        claimed = await call(agent, "task_claim")
        assert claimed["task"] is not None and claimed["task"]["id"] == task["id"], claimed
        working = (await js.expect("event"))["event"]
        assert set(working) == {"statusUpdate"}, working
        assert working["statusUpdate"]["taskId"] == task["id"]
        assert state_of(working["statusUpdate"]) == "TASK_STATE_WORKING"

        done = await call(agent, "task_complete", task_id=task["id"], result=RESULT)
        assert done["status"] == "completed"
        after: list[dict[str, Any]] = []
        while (observed := await js.next())["kind"] != "end":
            after.append(observed["event"])
        await js.finish()

    assert [next(iter(event)) for event in after] == ["artifactUpdate", "statusUpdate"], after
    artifact_update, final = after[0]["artifactUpdate"], after[1]["statusUpdate"]
    assert artifact_update["taskId"] == task["id"]
    artifact = artifact_update["artifact"]
    assert artifact["name"] == "result"
    assert [part["data"] for part in artifact["parts"] if "data" in part] == [RESULT]
    assert final["taskId"] == task["id"] and state_of(final) == "TASK_STATE_COMPLETED"

    async with server.mcp() as admin:
        orchestrated = await call(admin, "task_get", task_id=task["id"])
    assert orchestrated["status"] == "completed" and orchestrated["result"] == RESULT


async def test_the_js_client_without_a_token_is_refused_with_401(
    js_client: Path, shared_fleet: FleetServer, tmp_path: Path
) -> None:
    async with run_js(js_client, tmp_path, shared_fleet, "no-token", token=None, spec=REVIEW_SPEC) as js:
        refusals = [await js.next(), await js.next()]
        await js.finish()
    assert [r["method"] for r in refusals] == ["GetTask", "SendMessage"]
    for refusal in refusals:
        assert refusal["kind"] == "refused", refusal  # the card was public; the JSON-RPC call is not
        assert refusal["statuses"] == [401], refusal
        assert "401" in refusal["error"], refusal
