"""The operator CLI: `agentfleet agents|tasks|workflows|locks|budgets|approvals|profiles|scorecard|audit query`,
over HTTP to a running server through the same door as every MCP client (role table, audit,
rate limits), as aligned tables (rich) or `--json`.

Each command is one MCP tool call, made with the worker's small client (the stateless 2026-07-28
envelope over httpx), so the CLI starts in a fraction of a second and needs no session."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidInput, Unavailable

FINAL_TASK_STATES = frozenset({"completed", "failed", "cancelled", "dead"})
WAIT_POLL_S = 0.5


@dataclass(frozen=True)
class Call:
    """What one command asks of the server, and how its answer is shown."""

    tool: str
    arguments: dict[str, Any]
    rows: Callable[[dict[str, Any]], list[dict[str, Any]]]
    columns: tuple[str, ...]
    text: Callable[[dict[str, Any]], str] | None = None  # shown as is instead of a table (export)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server, e.g. http://127.0.0.1:8765 (AGENTFLEET_URL)")
    parser.add_argument("--token", help="a token (AGENTFLEET_TOKEN; else the data dir's admin token)")
    parser.add_argument("--data-dir", help="where to find admin.token when no token is given (AGENTFLEET_DATA_DIR)")
    parser.add_argument("--json", action="store_true", help="print the server's answer as JSON")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agents = _group(commands, "agents", "agents of the fleet")
    listing = _command(agents, "list", "agents, newest first")
    listing.add_argument("--status", help="only agents in this status")
    listing.add_argument("--profile", help="only agents of this profile")
    listing.add_argument("--limit", type=int, default=100)
    _command(agents, "get", "one agent").add_argument("agent_id")
    terminate = _command(agents, "terminate", "end an agent (and its descendants)")
    terminate.add_argument("agent_id")
    terminate.add_argument("--no-cascade", action="store_true", help="refuse if it has live children")
    _command(agents, "restart", "replace a process agent's process").add_argument("agent_id")

    tasks = _group(commands, "tasks", "the work queue")
    listing = _command(tasks, "list", "tasks, newest first")
    listing.add_argument("--status", help="queued, running, pending_approval, completed, failed, dead, cancelled")
    listing.add_argument("--type", help="only tasks of this type")
    listing.add_argument("--agent", help="only tasks leased to this agent")
    listing.add_argument("--limit", type=int, default=50)
    getting = _command(tasks, "get", "one task; --wait follows it to its end")
    getting.add_argument("task_id")
    getting.add_argument("--wait", action="store_true", help="show progress until it completes, fails or ends")
    _command(tasks, "cancel", "cancel a task").add_argument("task_id")
    submit = _command(tasks, "submit", "queue a task")
    submit.add_argument("type")
    submit.add_argument("--payload", help="the payload as JSON (default null)")
    submit.add_argument("--capability", action="append", default=[], help="a capability it requires (repeat)")
    submit.add_argument("--priority", choices=["critical", "high", "normal", "low"])

    workflows = _group(commands, "workflows", "workflow runs")
    listing = _command(workflows, "list", "runs, newest first")
    listing.add_argument("--status", help="running, completed, failed, cancelled")
    listing.add_argument("--limit", type=int, default=50)
    _command(workflows, "get", "one run with its steps").add_argument("run_id")
    _command(workflows, "cancel", "cancel a run and its open tasks").add_argument("run_id")

    locks = _group(commands, "locks", "resource locks")
    _command(locks, "list", "held and waiting locks").add_argument("--prefix", help="only resources starting so")

    budgets = commands.add_parser("budgets", help="budgets: limits, spend, reservations")
    add_connection_flags(budgets)
    budgets.add_argument("--scope", help="one scope: global, agent:<id>, profile:<name>, pool:<name>")
    budgets.set_defaults(handler=run, verb=None)

    approvals = _group(commands, "approvals", "tasks waiting for a person")
    _command(approvals, "list", "pending approvals").add_argument("--status", default="pending")
    for verb in ("approve", "reject"):
        decide = _command(approvals, verb, f"{verb} a pending task")
        decide.add_argument("approval_id")
        decide.add_argument("--note", help="why, kept with the decision")


def register_profiles(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profiles = _group(commands, "profiles", "profile versions, rollouts and comparisons")
    listing = _command(profiles, "list", "profile versions with state and source")
    listing.add_argument("--name", help="only this profile's versions")
    listing.add_argument("--state", help="active, deprecated or retired")
    _command(profiles, "get", "one version: name, name@1.2.0 or name@^1").add_argument("profile")
    _command(profiles, "export", "a version as YAML").add_argument("profile")
    _command(profiles, "register", "register the profile in a YAML file").add_argument("file", type=Path)
    for verb in ("deprecate", "retire"):
        _command(profiles, verb, f"{verb} name@version").add_argument("profile")
    rollout = _command(profiles, "rollout", "set a name's rollout: --weight 1.3.0=10 --weight 1.2.0=90")
    rollout.add_argument("name")
    rollout.add_argument("--weight", action="append", default=[], help="version=percent (repeat; sum 100)")
    rollout.add_argument("--rollback", action="store_true", help="back to the rollout before this one")
    compare = _command(profiles, "compare", "two versions side by side with significance tests")
    compare.add_argument("name")
    compare.add_argument("version_a")
    compare.add_argument("version_b")
    compare.add_argument("--period", default="7d")
    scorecard = commands.add_parser("scorecard", help="how a scope did this period (over HTTP to a running server)")
    add_connection_flags(scorecard)
    scorecard.add_argument("scope", help="agent:<id>, profile:<name>[@<version>] or task_type:<type>")
    scorecard.add_argument("--period", default="7d", help="24h, 7d, 4w")
    scorecard.set_defaults(handler=run, group="scorecard", verb="show")


def _weights(pairs: list[str]) -> dict[str, int]:
    weights = {}
    for pair in pairs:
        version, _, percent = pair.partition("=")
        if not percent.isdigit():
            raise InvalidInput(f"--weight {pair!r}: write version=percent, e.g. 1.3.0=10")
        weights[version] = int(percent)
    return weights


def _profile_call(args: argparse.Namespace) -> Call:  # noqa: PLR0911 - one line per command
    columns = ("ref", "state", "source", "runtime", "created_by", "created_at")
    figures = ("finished", "success_rate", "retries_per_task", "run_time_s", "cost_per_task_usd", "feedback")
    match args.verb:
        case "list":
            return Call("profile_list", _given(name=args.name, state=args.state), lambda a: a["profiles"], columns)
        case "get":
            return Call("profile_get", {"profile": args.profile}, _one, (*columns, "description"))
        case "export":
            return Call("profile_export", {"profile": args.profile}, _one, ("ref",), text=lambda a: a["yaml"])
        case "register":
            try:
                definition = args.file.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot read {args.file}: {exc.strerror}") from None
            return Call("profile_register", {"definition": definition}, _one, (*columns, "created"))
        case "deprecate" | "retire":
            return Call(f"profile_{args.verb}", {"profile": args.profile}, _one, columns)
        case "rollout":
            arguments = {"name": args.name, "rollback": True} if args.rollback else {"name": args.name}
            if not args.rollback:
                arguments["versions"] = _weights(args.weight)
            return Call("profile_rollout_set", arguments, _one, ("name", "versions", "previous", "updated_by"))
        case "compare":
            arguments = {
                "name": args.name,
                "version_a": args.version_a,
                "version_b": args.version_b,
                "period": args.period,
            }
            return Call(
                "profile_compare",
                arguments,
                lambda a: [{"version": a["version_a"]} | a["a"], {"version": a["version_b"]} | a["b"]],
                ("version", *figures),
                text=None,
            )
    arguments = {"scope": args.scope, "period": args.period}
    return Call(
        "scorecard",
        arguments,
        lambda a: [{"period": "current"} | a["current"], {"period": "previous"} | a["previous"]],
        ("period", *figures),
    )


def add_audit_query(audit_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = audit_commands.add_parser("query", help="search the audit trail on a running server")
    add_connection_flags(query)
    query.add_argument("--actor", help="who acted: admin, an agent id, a token name")
    query.add_argument("--action", help="e.g. task.claim, request.refused")
    query.add_argument("--subject", help="what it acted on: an id")
    query.add_argument("--limit", type=int, default=50)
    query.set_defaults(handler=run, group="audit", verb="query")


def _group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = commands.add_parser(name, help=f"{help_text} (over HTTP to a running server)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    parser.set_defaults(group=name)
    return verbs


def _command(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], verb: str, help_text: str
) -> argparse.ArgumentParser:
    parser = verbs.add_parser(verb, help=help_text)
    add_connection_flags(parser)
    parser.set_defaults(handler=run)
    return parser


# -- what each command asks ------------------------------------------------------------------------
def _given(**arguments: Any) -> dict[str, Any]:
    return {name: value for name, value in arguments.items() if value is not None}


def _one(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [answer]


def call_for(args: argparse.Namespace) -> Call:  # noqa: PLR0911 - one line per command
    group, verb = getattr(args, "group", "budgets"), args.verb
    agent_columns = ("id", "name", "profile", "runtime", "status", "parent_id", "last_heartbeat_at")
    task_columns = ("id", "type", "status", "priority", "agent_id", "attempts", "progress", "created_at")
    run_columns = ("id", "name", "status", "submitted_by", "created_at", "finished_at")
    if group in ("profiles", "scorecard"):
        return _profile_call(args)
    match group, verb:
        case "agents", "list":
            arguments = _given(status=args.status, profile=args.profile, limit=args.limit)
            return Call("agent_list", arguments, lambda a: a["agents"], agent_columns)
        case "agents", "get":
            return Call("agent_get", {"agent_id": args.agent_id}, _one, agent_columns)
        case "agents", "terminate":
            arguments = {"agent_id": args.agent_id, "cascade": not args.no_cascade}
            return Call(
                "agent_terminate", arguments, lambda a: [{"terminated": ", ".join(a["terminated"])}], ("terminated",)
            )
        case "agents", "restart":
            return Call("agent_restart", {"agent_id": args.agent_id}, _one, agent_columns)
        case "tasks", "list":
            arguments = _given(status=args.status, type=args.type, agent_id=args.agent, limit=args.limit)
            return Call("task_list", arguments, lambda a: a["tasks"], task_columns)
        case "tasks", "get":
            return Call("task_get", {"task_id": args.task_id}, _one, (*task_columns, "error", "result"))
        case "tasks", "cancel":
            return Call("task_cancel", {"task_id": args.task_id}, _one, task_columns)
        case "tasks", "submit":
            arguments = _given(type=args.type, payload=_payload(args.payload), priority=args.priority)
            arguments["capabilities"] = args.capability
            return Call("task_submit", arguments, _one, ("id", "type", "status", "priority", "capabilities"))
        case "workflows", "list":
            arguments = _given(status=args.status, limit=args.limit)
            return Call("workflow_list", arguments, lambda a: a["runs"], run_columns)
        case "workflows", "get":
            return Call("workflow_get", {"run_id": args.run_id}, lambda a: a["steps"], ("id", "status", "task_ids"))
        case "workflows", "cancel":
            return Call("workflow_cancel", {"run_id": args.run_id}, _one, run_columns)
        case "locks", "list":
            columns = ("lock_id", "holder", "status", "names", "expires_at")
            return Call("lock_list", _given(prefix=args.prefix), lambda a: a["locks"], columns)
        case "approvals", "list":
            columns = ("id", "task_id", "task_type", "requested_by", "status", "expires_at", "estimated_cost_usd")
            return Call("approval_list", {"status": args.status}, lambda a: a["approvals"], columns)
        case "approvals", ("approve" | "reject"):
            arguments = _given(approval_id=args.approval_id, decision=verb, note=args.note)
            return Call("approval_decide", arguments, _one, ("id", "task_id", "status", "decided_by", "note"))
        case "audit", "query":
            arguments = _given(actor=args.actor, action=args.action, subject=args.subject, limit=args.limit)
            columns = ("id", "at", "principal", "action", "subject", "reason")
            return Call("audit_query", arguments, lambda a: a["entries"], columns)
    columns = ("scope", "period", "enforcement", "limit_usd", "spent_usd", "reserved_usd", "percent", "blocked")
    return Call("budget_status", _given(scope=args.scope), lambda a: [b["budget"] for b in a["budgets"]], columns)


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"--payload must be JSON, e.g. '{{\"pr\": 42}}': {exc}") from None


# -- running one ----------------------------------------------------------------------------------
def connection(args: argparse.Namespace) -> tuple[str, str]:
    url = args.url or os.environ.get("AGENTFLEET_URL") or "http://127.0.0.1:8765"
    token = args.token or os.environ.get("AGENTFLEET_TOKEN")
    if token is None:
        from server.settings import default_data_dir

        data_dir = Path(args.data_dir or os.environ.get("AGENTFLEET_DATA_DIR") or default_data_dir()).expanduser()
        try:
            token = (data_dir / "admin.token").read_text(encoding="utf-8").strip()
        except OSError:
            raise InvalidInput(
                f"no token: pass --token or set AGENTFLEET_TOKEN (no admin token in {data_dir})"
            ) from None
    return url, token


def run(args: argparse.Namespace) -> int:
    url, token = connection(args)
    call = call_for(args)
    return asyncio.run(_run(url, token, call, args))


async def _run(url: str, token: str, call: Call, args: argparse.Namespace) -> int:
    from server.worker.client import FleetClient, NeverReached, ToolError, Unauthorized, Unreachable

    client = FleetClient(url, token)
    try:
        answer = await client.call(call.tool, call.arguments)
        if getattr(args, "wait", False):
            answer = await _follow(client, answer, args.json)
    except Unreachable as exc:
        raise Unavailable(f"cannot reach the server at {url} ({exc}): check --url / AGENTFLEET_URL") from None
    except Unauthorized:
        raise InvalidInput("the server refused the token (HTTP 401): check --token / AGENTFLEET_TOKEN") from None
    except ToolError as exc:
        print(f"agentfleet: {exc.text}", file=sys.stderr)
        return 2
    except NeverReached as exc:
        raise Unavailable(str(exc)) from None
    finally:
        await client.aclose()
    show(answer, call, args.json)
    if call.tool == "profile_compare" and not args.json:
        print(answer["verdict"])
    return 0


async def _follow(client: Any, task: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Poll until the task ends, showing its state and progress on stderr (a spinner on a terminal)."""
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("", spinner="dots") as status:
        while task["status"] not in FINAL_TASK_STATES:
            progress = f" {task['progress']}%" if task.get("progress") is not None else ""
            message = f" — {task['progress_message']}" if task.get("progress_message") else ""
            status.update(f"{task['id']}: {task['status']}{progress}{message}")
            await asyncio.sleep(WAIT_POLL_S)
            task = await client.call("task_get", {"task_id": task["id"]})
    return task


def show(answer: dict[str, Any], call: Call, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    if call.text is not None:
        print(call.text(answer), end="")
        return
    from rich.console import Console
    from rich.table import Table

    rows = call.rows(answer)
    if not rows:
        print("nothing to show")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in call.columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in call.columns))
    Console(width=max(120, _terminal_width())).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))[:200]
    return str(value)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160
