"""Run the official A2A TCK (a2aproject/a2a-tck, branch 1.0-dev) against a real `agentfleet serve`.

Why: our A2A surface is our own request handler over the a2a-sdk's JSON-RPC binding; the TCK is
the independent judge of whether a peer that follows the spec can talk to it. This script makes
that judgement one command: a fresh server (own port, data dir and admin token), a worker, the TCK
at the chosen level, and one JSON line with the outcome.

    python scripts/a2a_tck.py --tck /tmp/a2a-tck --python /tmp/tck-venv/bin/python [--level must]
        [--keep-logs DIR] [--timeout-s 600]

The TCK lives outside this repository, in its own venv (grpcio, pytest-html, gherkin-official, ...).

The worker (`agentfleet worker --profile default`, capability `general`) answers each plain-text
task with its text. Without it nothing runs the TCK's tasks: blocking SendMessage waits out
AGENTFLEET_A2A_BLOCK_S on every call, and the TCK's streaming tests never end (the stream stays
open for a task that stays queued, and SSE pings keep the TCK's read timeout from firing).

The TCK (1.0-dev) cannot authenticate: its .env.example names A2A_AUTH_TYPE/A2A_AUTH_TOKEN but
no code reads them, and every route here but the card and /healthz needs a bearer token. A small
pytest plugin, written to a temp dir and loaded into the TCK with `-p` (its checkout is not
touched), adds `Authorization: Bearer` to every httpx request to the server. (The TCK also posts
JSON-RPC to `<interface url>/`; the server accepts that trailing slash.)

The last stdout line is JSON: {"passed", "failed", "skipped", "errors", "failures": [{"test",
"requirement", "message"}]}, counted from the TCK's JUnit report (its compatibility.json counts a
test that skipped for want of a prerequisite as a FAIL, so it only helps name requirements).
Exit: 0 the TCK ran (failures or not), 1 the server did not start, 2 usage, 3 the TCK did not
finish (timed out: partial counts are still printed if it wrote a report) or left no report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 60.0
MESSAGE_MAX = 240
PLUGIN_MODULE = "agentfleet_tck_shim"
# How a child is stopped: each signal to its process group, then this long to wait.
STOP = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
# SIGINT first: pytest then still writes its JUnit and compatibility reports.
STOP_TCK = ((signal.SIGINT, 20.0), *STOP)
# The worker's command: answer each text task with its text, so tasks reach `completed`.
WORKER_CODE = "import json, sys; t = json.load(sys.stdin); print(json.dumps({'text': t['payload'].get('text')}))"
PLUGIN_SOURCE = '''\
"""Loaded into the TCK's pytest by agentfleet's scripts/a2a_tck.py; see its docstring."""
import os

import httpx

_TOKEN = os.environ["A2A_AUTH_TOKEN"]
_ORIGIN = httpx.URL(os.environ["AGENTFLEET_TCK_ORIGIN"])
_send = httpx.Client.send


def _patched_send(self, request, **kwargs):
    if (request.url.scheme, request.url.host, request.url.port) == (_ORIGIN.scheme, _ORIGIN.host, _ORIGIN.port):
        request.headers.setdefault("Authorization", "Bearer " + _TOKEN)
    return _send(self, request, **kwargs)


httpx.Client.send = _patched_send
'''
REQUIREMENT_IN_MESSAGE = re.compile(
    r"^(?:AssertionError: )?(?P<req>[A-Z][A-Z0-9_]*(?:-[A-Z0-9]+)+) \[[^\]]*\] failed on \w+: (?P<msg>.*?)"
    r"(?: \(see [^)]*\))?$"
)

Signals = tuple[tuple[signal.Signals, float], ...]


class UsageError(Exception):
    """Bad arguments or a TCK checkout we cannot use: exit 2."""


@dataclass(frozen=True)
class Paths:
    tck: Path
    python: Path
    agentfleet: Path
    work: Path  # data dir, plugin, logs and reports live under here

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    @property
    def plugin_dir(self) -> Path:
        return self.work / "plugin"

    @property
    def reports(self) -> Path:
        return self.work / "reports"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tck", required=True, type=Path, help="a checkout of a2aproject/a2a-tck (branch 1.0-dev)")
    parser.add_argument("--python", type=Path, help="the TCK venv's python (default: <tck>/.venv/bin/python)")
    parser.add_argument("--level", choices=["must", "should", "may"], default="must")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="keep server/worker/TCK logs and reports here")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="stop the TCK after this long (default 600)")
    return parser.parse_args(argv)


def resolve_paths(args: argparse.Namespace, work: Path) -> Paths:
    tck = args.tck.resolve()
    if not (tck / "run_tck.py").is_file() or not (tck / "tests" / "compatibility").is_dir():
        raise UsageError(f"{tck} is not an a2a-tck checkout (no run_tck.py or tests/compatibility)")
    python = (args.python or tck / ".venv" / "bin" / "python").absolute()  # not resolve(): keep the venv link
    if not python.exists():
        raise UsageError(f"no TCK python at {python}; create a venv with the TCK installed and pass --python")
    found = shutil.which("agentfleet") or shutil.which("agentfleet", path=str(Path(sys.executable).parent))
    if found is None:
        raise UsageError("agentfleet is not on PATH; activate agentfleet's venv first")
    if args.timeout_s <= 0:
        raise UsageError("--timeout-s must be positive")
    return Paths(tck=tck, python=python, agentfleet=Path(found), work=work)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without agentfleet settings (so nothing points at a real store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLEET_")}
    env.update(extra)
    return env


def spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """A child in a session of its own: Ctrl-C reaches only us, and stopping it stops its group."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[Any] | None, signals: Signals = STOP) -> None:
    """Signal the child's process group in turn until none of it is left (the leader may be gone
    already: run_tck.py exits on SIGINT before its pytest has written the reports)."""
    if proc is None:
        return
    for sig, wait_s in signals:
        if not group_alive(proc):
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_alive(proc):
            time.sleep(0.1)


def group_alive(proc: subprocess.Popen[Any]) -> bool:
    proc.poll()  # reap the leader, so a zombie does not count
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def http_get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with suppress(OSError, ValueError):
            if http_get_json(f"{base_url}/healthz").get("status") == "ok":
                return True
        time.sleep(0.2)
    return False


def write_plugin(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)


def tck_command(paths: Paths, base_url: str, level: str) -> list[str]:
    """run_tck.py puts its own report options first (into <tck>/reports); later pytest options win."""
    reports = paths.reports
    return [
        str(paths.python),
        "run_tck.py",
        f"--sut-host={base_url}",
        f"--level={level}",
        "--",
        "-p",
        PLUGIN_MODULE,
        "-p",
        "no:cacheprovider",
        "-rfEs",
        f"--junitxml={reports / 'junitreport.xml'}",
        f"--compatibility-report={reports / 'compatibility'}",
        f"--html={reports / 'tck_report.html'}",
    ]


def run_tck(paths: Paths, base_url: str, level: str, env: dict[str, str], log: Path, timeout_s: float) -> bool:
    """Run the TCK, echoing its output to stderr (stdout is kept for the JSON line).
    False if it had to be stopped after timeout_s."""
    paths.reports.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        tck_command(paths, base_url, level),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=paths.tck,
        start_new_session=True,
    )
    assert proc.stdout is not None
    with log.open("wb") as out:
        echo = threading.Thread(target=tee, args=(proc.stdout, out), daemon=True)
        echo.start()
        try:
            proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            print(f"a2a_tck: the TCK ran past {timeout_s:g} s; stopping it", file=sys.stderr)
            return False
        finally:
            stop(proc, STOP_TCK)
            echo.join(5.0)


def tee(source: IO[bytes], out: IO[bytes]) -> None:
    for line in source:
        out.write(line)
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


def node_id(tck: Path, classname: str, name: str) -> str:
    """JUnit's dotted classname back to a pytest node id (path::Class::test)."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        path = "/".join(parts[:i]) + ".py"
        if (tck / path).is_file():
            return "::".join([path, *parts[i:], name])
    return f"{classname}::{name}"


def requirements_by_test(compat_json: Path) -> dict[str, list[tuple[str, str]]]:
    """test node id -> [(requirement id, its status)] from the TCK's compatibility.json."""
    if not compat_json.is_file():
        return {}
    found: dict[str, list[tuple[str, str]]] = {}
    for req_id, entry in json.loads(compat_json.read_text()).get("per_requirement", {}).items():
        for test_id in entry.get("test_ids", []):
            found.setdefault(test_id, []).append((req_id, entry.get("status", "")))
    return found


def describe_failure(text: str, candidates: list[tuple[str, str]]) -> tuple[str | None, str]:
    """(requirement id, short message) from a JUnit failure message and the requirements of its test."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    match = REQUIREMENT_IN_MESSAGE.match(first)
    if match:
        return match["req"], match["msg"][:MESSAGE_MAX]
    failing = [req for req, status in candidates if status == "FAIL"] or [req for req, _ in candidates]
    return (failing[0] if failing else None), first[:MESSAGE_MAX]


def summarize(tck: Path, junit_xml: Path, compat_json: Path) -> dict[str, Any]:
    requirements = requirements_by_test(compat_json)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures: list[dict[str, Any]] = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        test = node_id(tck, case.get("classname", ""), case.get("name", ""))
        problem, kind = case.find("failure"), "failed"
        if problem is None:
            problem, kind = case.find("error"), "errors"
        if problem is None:
            counts["skipped" if case.find("skipped") is not None else "passed"] += 1
            continue
        counts[kind] += 1
        text = problem.get("message") or problem.text or ""
        requirement, message = describe_failure(text, requirements.get(test, []))
        failures.append({"test": test, "requirement": requirement, "message": message})
    return {**counts, "failures": failures}


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """A temp dir for the run; with --keep-logs its logs and reports are copied there at the end."""
    work = Path(tempfile.mkdtemp(prefix="agentfleet-tck-"))
    try:
        yield work
    finally:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for item in [*work.glob("*.log"), *(work / "reports").glob("*")]:
                shutil.copy2(item, keep / item.name)
        shutil.rmtree(work, ignore_errors=True)


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def start_server(paths: Paths, port: int, token: str) -> subprocess.Popen[bytes]:
    cmd = [str(paths.agentfleet), "serve", "--port", str(port), "--data-dir", str(paths.data_dir)]
    return spawn(cmd, paths.work / "serve.log", clean_env(AGENTFLEET_ADMIN_TOKEN=token), REPO)


def start_worker(paths: Paths, base_url: str, token: str) -> subprocess.Popen[bytes]:
    cmd = [str(paths.agentfleet), "worker", "--profile", "default", "--name", "tck-worker", "--wait-s", "5"]
    cmd += ["--", sys.executable, "-c", WORKER_CODE]
    return spawn(cmd, paths.work / "worker.log", clean_env(AGENTFLEET_URL=base_url, AGENTFLEET_TOKEN=token), REPO)


def tck_env(paths: Paths, base_url: str, token: str) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",  # live progress on stderr
        PYTHONPATH=os.pathsep.join(filter(None, [str(paths.plugin_dir), os.environ.get("PYTHONPATH")])),
        A2A_AUTH_TYPE="bearer",
        A2A_AUTH_TOKEN=token,
        AGENTFLEET_TCK_ORIGIN=base_url,
    )


def run(args: argparse.Namespace, work: Path) -> int:
    paths = resolve_paths(args, work)
    token = "tck_" + os.urandom(16).hex()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = worker = None
    try:
        server = start_server(paths, port, token)
        if not wait_healthy(base_url, server):
            state = f"exited with {server.returncode}" if server.poll() is not None else "never answered /healthz"
            print(f"a2a_tck: agentfleet serve {state}:\n{log_tail(work / 'serve.log')}", file=sys.stderr)
            return 1
        worker = start_worker(paths, base_url, token)
        write_plugin(paths.plugin_dir)
        env = tck_env(paths, base_url, token)
        finished = run_tck(paths, base_url, args.level, env, work / "tck.log", args.timeout_s)
    finally:
        stop(worker)
        stop(server)
    junit = paths.reports / "junitreport.xml"
    if not junit.is_file():
        print(f"a2a_tck: the TCK left no JUnit report:\n{log_tail(work / 'tck.log')}", file=sys.stderr)
        return 3
    print(json.dumps(summarize(paths.tck, junit, paths.reports / "compatibility.json")))
    return 0 if finished else 3


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up on SIGTERM as on Ctrl-C
    try:
        with work_dir(args.keep_logs) as work:
            return run(args, work)
    except UsageError as exc:
        print(f"a2a_tck: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("a2a_tck: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
