"""A claimer in its own OS process, talking MCP over Streamable HTTP to a real `agentfleet serve`:
loops task_claim -> task_complete and reports every step as one JSON line on stdout, flushed at
once, so a reader (or a file) holds every acknowledged completion even if this process or the
server is killed a moment later.

usage: python -m tests.workers.mcp_claimer MCP_URL TOKEN [--wait-s S] [--idle-claims N]
                                           [--stop-file PATH] [--wait-for-go]

Lines (each a JSON object with "event"):
  ready                               the MCP session is up (then, with --wait-for-go, it waits
                                      for one line on stdin before claiming)
  claimed {"task"}                    task_claim returned this task
  completed {"task"}                  task_complete returned success: an acknowledged completion
  complete_refused {"task","error"}   task_complete answered a tool error (e.g. lease_expired)
  claim_refused {"error"}             task_claim answered a tool error
  disconnected {"error"}              the server went away (or stopped answering): exit code 3
  drained                             done: exit code 0
  gave_up                             task_claim kept refusing: exit code 4

It stops after --idle-claims empty claims in a row; with --stop-file, only once an empty claim
comes back and that file exists (the test creates it when the store says all work is done).

Tests start it with `ClaimerProcess` (below), which keeps the lines in a file and reads them back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

DISCONNECTED = 3
GAVE_UP = 4
CALL_SLACK_S = 20.0  # a call that takes this much longer than its own wait: the server is gone
MAX_REFUSED_CLAIMS = 20
SERVER_GONE = (httpx2.TransportError, MCPError, OSError, TimeoutError)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def drain(client: Client, args: argparse.Namespace) -> int:
    idle = 0
    refused = 0
    while True:
        with anyio.fail_after(args.wait_s + CALL_SLACK_S):
            claimed = await client.call_tool("task_claim", {"wait_s": args.wait_s})
        if claimed.is_error:
            refused += 1
            emit("claim_refused", error=claimed.content[0].text)
            if refused >= MAX_REFUSED_CLAIMS:
                emit("gave_up")
                return GAVE_UP
            continue
        refused = 0
        task = (claimed.structured_content or {}).get("task")
        if task is None:
            idle += 1
            if args.stop_file is not None:
                if args.stop_file.exists():
                    break
            elif idle >= args.idle_claims:
                break
            continue
        idle = 0
        emit("claimed", task=task["id"])
        with anyio.fail_after(CALL_SLACK_S):
            done = await client.call_tool("task_complete", {"task_id": task["id"], "result": {"ok": True}})
        if done.is_error:
            emit("complete_refused", task=task["id"], error=done.content[0].text)
        else:
            emit("completed", task=task["id"])
    emit("drained")
    return 0


async def main(args: argparse.Namespace) -> int:
    gone: list[BaseException] = []
    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60.0) as http,
            Client(streamable_http_client(args.url, http_client=http)) as client,
        ):
            emit("ready")
            if args.wait_for_go:
                await anyio.to_thread.run_sync(sys.stdin.readline)
            code = await drain(client, args)
    # A killed server surfaces as transport errors (usually inside the client's exception group), a
    # closed MCP session, or a call that never answers. Anything else is a bug: let it crash loudly.
    except* SERVER_GONE as group:
        gone.append(group)
    if gone:
        emit("disconnected", error=repr(gone[0])[:500])
        return DISCONNECTED
    return code


# -- parent side: what a test uses to run one of these and read what it said ----------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


class ClaimerProcess:
    """One claimer OS process; its stdout goes to LOG_DIR/NAME.jsonl, its stderr to NAME.stderr."""

    def __init__(
        self,
        url: str,
        token: str,
        log_dir: Path,
        name: str,
        *,
        wait_s: float = 0.5,
        idle_claims: int = 2,
        stop_file: Path | None = None,
        wait_for_go: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.jsonl"
        self.err_path = log_dir / f"{name}.stderr"
        argv = [
            sys.executable,
            "-m",
            "tests.workers.mcp_claimer",
            url,
            token,
            "--wait-s",
            str(wait_s),
            "--idle-claims",
            str(idle_claims),
        ]
        if stop_file is not None:
            argv += ["--stop-file", str(stop_file)]
        if wait_for_go:
            argv.append("--wait-for-go")
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
            )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The complete lines written so far (a line still being written is left for later)."""
        text = self.log_path.read_text(encoding="utf-8")
        lines = text.split("\n")[:-1]
        events = [json.loads(line) for line in lines if line]
        return events if kind is None else [e for e in events if e["event"] == kind]

    def tasks(self, kind: str) -> list[str]:
        return [e["task"] for e in self.events(kind)]

    def go(self) -> None:
        assert self.process.stdin is not None, "started without wait_for_go"
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        tail = self.log_path.read_text(encoding="utf-8")[-1500:]
        return (
            f"--- {self.name} (exit {self.process.poll()}) stdout tail ---\n{tail}\n"
            f"--- {self.name} stderr ---\n{self.err_path.read_text(encoding='utf-8')[-3000:]}"
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mcp_claimer")
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--wait-s", type=float, default=0.5)
    parser.add_argument("--idle-claims", type=int, default=2)
    parser.add_argument("--stop-file", type=Path, default=None)
    parser.add_argument("--wait-for-go", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse(sys.argv[1:])))
