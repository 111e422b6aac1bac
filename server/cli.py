"""The `agentfleet` command: serve (HTTP or stdio), db upgrade, status, token, audit verify, worker."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server import __version__, inbox_cli, operator_cli
from server.errors import FleetError, Unavailable

if TYPE_CHECKING:
    from server.admin_token import AdminToken
    from server.settings import Settings
    from server.store.database import Database

log = logging.getLogger("agentfleet")


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where the SQLite store and admin token live (AGENTFLEET_DATA_DIR)")
    parser.add_argument("--database-url", help="SQLite or postgresql:// URL (AGENTFLEET_DATABASE_URL)")
    parser.add_argument("--profiles-dir", help="an extra folder of YAML profiles (AGENTFLEET_PROFILES_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentfleet", description="Orchestration server for fleets of AI agents.")
    parser.add_argument("--version", action="version", version=f"agentfleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (AGENTFLEET_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (HTTP; or MCP over stdio with --stdio)")
    _add_store_flags(serve)
    serve.add_argument("--host", help="bind address (AGENTFLEET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (AGENTFLEET_PORT, default 8765)")
    serve.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="AGENTFLEET_LOG_LEVEL")

    db = commands.add_parser("db", help="store maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations (serve does this on start)")
    _add_store_flags(upgrade)

    status = commands.add_parser("status", help="fleet summary in the terminal")
    _add_store_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check the hash chain; exit 1 naming the first bad row")
    _add_store_flags(verify)
    operator_cli.add_audit_query(audit_commands)
    operator_cli.register(commands)
    inbox_cli.register(commands)
    operator_cli.register_profiles(commands)
    completion = commands.add_parser("completion", help="print a shell completion script: bash, zsh or tcsh")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])

    token = commands.add_parser("token", help="tokens for people and services (acts as the admin)")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="make a token; prints its secret once")
    create.add_argument("name", help="who it is for: the id its calls are audited under")
    create.add_argument("--role", required=True, choices=["admin", "operator", "viewer"])
    create.add_argument("--expires-in-s", type=int, help="lifetime in seconds (default: until revoked)")
    listing = token_commands.add_parser("list", help="every token, without secrets")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = token_commands.add_parser("revoke", help="revoke a token now")
    revoke.add_argument("token", help="its name or id (tkn_…)")
    rotate = token_commands.add_parser("rotate", help="new secret, same name and role; the old one stops working")
    rotate.add_argument("token", help="its name or id (tkn_…)")
    adopt = token_commands.add_parser(
        "adopt-admin",
        help="make this data dir's admin token (or AGENTFLEET_ADMIN_TOKEN) the store's admin; the old one stops",
    )
    for sub in (create, listing, revoke, rotate, adopt):
        _add_store_flags(sub)

    worker = commands.add_parser(
        "worker",
        help="a pull worker: claims tasks and runs CMD per task (task JSON on stdin, result JSON on stdout)",
        usage="agentfleet worker [--profile P] [options] -- CMD [ARGS...]",
    )
    worker.add_argument("--url", help="the server's base URL, e.g. http://127.0.0.1:8765 (AGENTFLEET_URL)")
    worker.add_argument("--token", help="an agent's token; with --profile an operator's (AGENTFLEET_TOKEN)")
    worker.add_argument("--profile", help="register an agent of this profile (and terminate it on exit)")
    worker.add_argument("--name", help="with --profile: the registered agent's name")
    worker.add_argument("--wait-s", type=float, default=20.0, help="task_claim long-poll in seconds (0-60, default 20)")
    worker.add_argument("--max-tasks", type=int, help="exit 0 after this many tasks")
    worker.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command and its arguments (no shell)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from server.settings import load_settings  # not at import: `agentfleet worker` starts without it

    return load_settings(
        data_dir=args.data_dir,
        database_url=args.database_url,
        profiles_dir=args.profiles_dir,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        log_level=getattr(args, "log_level", None),
    )


def _configure_logging(level: str, log_format: str | None) -> None:
    # Before MCPServer is built: it calls basicConfig, and stdout must stay clean for stdio.
    from server.logs import configure_logging

    configure_logging(level, log_format)


def _announce(settings: Settings, admin: AdminToken, stdio: bool) -> None:
    out = sys.stderr if stdio else sys.stdout
    where = (
        "MCP over stdio"
        if stdio
        else f"{settings.base_url}  (MCP {settings.base_url}/mcp, A2A {settings.base_url}/a2a)"
    )
    print(f"agentfleet {__version__} listening on {where}", file=out)
    print(f"data dir: {settings.data_dir}", file=out)
    if admin.created:
        print(f"admin token (shown once; kept in {admin.path}): {admin.value}", file=out)
    elif admin.path is not None:
        print(f"admin token: in {admin.path}", file=out)
    else:
        print("admin token: from AGENTFLEET_ADMIN_TOKEN", file=out)
    out.flush()


def _check_store(settings: Settings) -> None:
    from server.store.database import check_reachable, create_store_engine

    engine = create_store_engine(settings.resolved_database_url)
    try:
        check_reachable(engine)
    finally:
        engine.dispose()


def _bind(settings: Settings) -> socket.socket:
    """The server's socket, bound before anything is printed or created, so a port in use is one
    line. Not yet listening: until uvicorn listens on it, callers are refused (and retry) rather
    than queued behind a server still starting."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        return sock
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot listen on {settings.host}:{settings.port} ({os.strerror(exc.errno) if exc.errno else exc}): "
            "stop what uses it, "
            "or pass --port / AGENTFLEET_PORT (and --host / AGENTFLEET_HOST)"
        ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from server.admin_token import ensure_admin_token
    from server.metrics import Metrics
    from server.runtime.hardening import harden_server_process
    from server.services.container import build_services
    from tools import build_mcp

    settings = _settings(args)
    harden_server_process()  # after the settings have read the secrets it scrubs
    _configure_logging(settings.log_level, settings.log_format)
    from server.tracing import configure_from_env

    configure_from_env("agentfleet")
    listener = None if args.stdio else _bind(settings)
    _check_store(settings)  # before the admin token or anything else is created
    admin = ensure_admin_token(settings)
    services = build_services(settings, admin.value)
    try:
        if args.stdio:
            mcp = build_mcp(services, Metrics(services.fleet, services.instruments), default_token=settings.token)
            _announce(settings, admin, stdio=True)
            anyio.run(_serve_stdio, mcp, services)
            return 0
        # The HTTP stack (and a2a-sdk) load only when serving HTTP: stdio starts faster.
        from server.http.app import create_app
        from server.http.serve import uvicorn_server

        server = uvicorn_server(create_app(services), settings, on_exit=services.release_waiters)
        _announce(settings, admin, stdio=False)
        server.run(sockets=[listener] if listener is not None else None)
        return 0
    finally:
        services.close()


async def _serve_stdio(mcp: Any, services: Any) -> None:
    from server.loops import background_loops

    async with background_loops(services):
        await mcp.run_stdio_async()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from server.store import migrate
    from server.store.database import check_reachable, create_store_engine

    settings = _settings(args)
    engine = create_store_engine(settings.resolved_database_url)
    # Each migration as it starts, on stderr: on a big store one can take a while.
    progress = logging.getLogger("alembic.runtime.migration")
    progress.setLevel(logging.INFO)
    progress.addHandler(logging.StreamHandler(sys.stderr))
    try:
        check_reachable(engine)
        migrate.upgrade(engine)
        print(f"store at revision {migrate.current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[Database]:
    """The store the flags and environment name, for one command. It must exist: a command other
    than `serve` and `db upgrade` never creates a data dir or a store."""
    from server.store.database import Database, check_reachable, create_store_engine, is_sqlite

    settings = _settings(args)
    url = settings.resolved_database_url
    if is_sqlite(url):
        path = _sqlite_path(url)
        if path is not None and not path.is_file():
            raise Unavailable(
                f"no store at {path}: start the server once (agentfleet serve), or point --data-dir / "
                "AGENTFLEET_DATA_DIR (or --database-url) at the one it uses"
            )
    db = Database(create_store_engine(url))
    try:
        check_reachable(db.engine)
        yield db
    finally:
        db.dispose()


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _ready(db: Database) -> bool:
    """Is the store reachable and migrated? Says what to do on stderr when not."""
    from server.clock import SystemClock
    from server.services.fleet import FleetService

    readiness = FleetService(db, SystemClock()).readiness_sync()
    if not readiness.ready:
        print(
            f"the store is {readiness.store}, migrations {readiness.migrations}: run `agentfleet db upgrade` "
            "or start the server",
            file=sys.stderr,
        )
    return readiness.ready


def cmd_status(args: argparse.Namespace) -> int:
    from server.clock import SystemClock
    from server.services.fleet import FleetService

    with _store(args) as db:
        if not _ready(db):
            return 1
        status = FleetService(db, SystemClock()).counts_sync()
    if args.json:
        print(json.dumps(status.model_dump(), indent=2))
        return 0
    print("agents: " + ", ".join(f"{k} {v}" for k, v in status.agents.items() if v) or "agents: none")
    print(f"{'task status':<18}" + "".join(f"{p:>10}" for p in ("critical", "high", "normal", "low")))
    for name, by_priority in status.tasks.items():
        print(f"{name:<18}" + "".join(f"{by_priority[p]:>10}" for p in ("critical", "high", "normal", "low")))
    print(f"total: {status.totals['agents']} agents, {status.totals['tasks']} tasks")
    for budget in status.budgets:
        state = "BLOCKED" if budget.blocked else budget.enforcement
        print(
            f"budget {budget.scope}: {budget.percent:.1f}% of {budget.limit_usd} USD ({budget.period}, {state}; "
            f"spent {budget.spent_usd}, reserved {budget.reserved_usd})"
        )
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from server.services.audit import verify_chain

    with _store(args) as db:
        report = db.read_sync(verify_chain)
    if not report.intact:
        print(f"audit chain BROKEN at {report.broken_at}; {report.rows} rows before it check out", file=sys.stderr)
        return 1
    heads = ", ".join(f"{chain}:{seq}:{digest}" for chain, (seq, digest) in sorted(report.heads.items()))
    print(f"audit chain intact: {report.rows} rows in {len(report.heads)} chain(s); heads (chain:seq:hash) {heads}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import asyncio

    from server.clock import SystemClock
    from server.domain.principal import ADMIN, Role
    from server.services.tokens import TokenService

    with _store(args) as db:
        if not _ready(db):
            return 1
        if args.token_command == "adopt-admin":
            return _adopt_admin(args, db)
        tokens = TokenService(db, SystemClock())
        if args.token_command == "create":
            issued = asyncio.run(tokens.create(ADMIN, args.name, Role(args.role), args.expires_in_s))
        elif args.token_command == "rotate":
            issued = asyncio.run(tokens.rotate(ADMIN, args.token))
        elif args.token_command == "revoke":
            revoked = asyncio.run(tokens.revoke(ADMIN, args.token))
            print(f"revoked {revoked.name} ({revoked.id}, {revoked.role}) at {revoked.revoked_at}")
            return 0
        else:
            return _print_tokens(asyncio.run(tokens.list(ADMIN)).tokens, args.json)
    print(issued.token)
    print(
        f"token {issued.details.name} ({issued.details.id}, role {issued.details.role}): shown once, kept only "
        "as a hash. Send it as `Authorization: Bearer <token>`.",
        file=sys.stderr,
    )
    return 0


def _adopt_admin(args: argparse.Namespace, db: Database) -> int:
    from server.admin_token import ensure_admin_token
    from server.clock import SystemClock
    from server.services.admin_identity import adopt_admin_identity

    admin = ensure_admin_token(_settings(args))
    changed = adopt_admin_identity(db, SystemClock(), admin.value)
    where = f"kept in {admin.path}" if admin.path else "from AGENTFLEET_ADMIN_TOKEN"
    if changed:
        print(f"the store's admin is now this admin token ({where}); restart every replica with it")
    else:
        print(f"this admin token ({where}) already is the store's admin")
    return 0


def _print_tokens(tokens: Sequence[Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps([t.model_dump() for t in tokens], indent=2))
        return 0
    for t in tokens:
        state = "active" if t.active else ("revoked " + (t.revoked_at or "") if t.revoked_at else "expired")
        print(f"{t.id}  {t.name:<24} {t.role:<9} {state}  created {t.created_at} by {t.created_by}")
    if not tokens:
        print("no tokens; create one with `agentfleet token create NAME --role operator`")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import os
    import shutil

    from server.worker.loop import WorkerConfig, run

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    url = args.url or os.environ.get("AGENTFLEET_URL")
    token = args.token or os.environ.get("AGENTFLEET_TOKEN")
    problems = [
        "no server URL: set AGENTFLEET_URL or pass --url" if not url else "",
        "no token: set AGENTFLEET_TOKEN or pass --token" if not token else "",
        "no command: agentfleet worker [--profile P] -- CMD [ARGS...]" if not command else "",
        f"{command[0]}: not found or not executable" if command and not shutil.which(command[0]) else "",
        "--url must start with http:// or https://" if url and not url.startswith(("http://", "https://")) else "",
        "--wait-s must be between 0 and 60" if not 0 <= args.wait_s <= 60 else "",
        "--max-tasks must be at least 1" if args.max_tasks is not None and args.max_tasks < 1 else "",
        "--name needs --profile" if args.name and not args.profile else "",
    ]
    if any(problems):
        for problem in filter(None, problems):
            print(f"agentfleet worker: {problem}", file=sys.stderr)
        return 2
    assert url and token
    _configure_logging(os.environ.get("AGENTFLEET_LOG_LEVEL") or "info", os.environ.get("AGENTFLEET_LOG_FORMAT"))
    traced = False
    if any(name.startswith("OTEL_") for name in os.environ):  # the OpenTelemetry imports only when asked for
        from server.tracing import configure_from_env

        traced = configure_from_env("agentfleet-worker")
    config = WorkerConfig(url, token, command, args.profile, args.name, args.wait_s, args.max_tasks, traced)
    return run(config)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab  # generates the script from the parser itself, so it never drifts from the commands

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("AGENTFLEET_DEBUG") == "1"
    handlers = {
        "completion": cmd_completion,
        "serve": cmd_serve,
        "status": cmd_status,
        "audit": cmd_audit_verify,
        "token": cmd_token,
        "worker": cmd_worker,
    }
    try:
        if args.command == "db":
            return cmd_db_upgrade(args)
        handler = getattr(args, "handler", None) or handlers[args.command]
        return int(handler(args))
    except FleetError as exc:
        if debug:
            raise
        print(f"agentfleet: {exc}", file=sys.stderr)
        return _EXIT_CODES.get(exc.code, 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the top-level handler: one line, the traceback only on request
        if debug:
            raise
        print(f"agentfleet: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


# A mistake in what was asked (a flag, a setting, an argument): 2. Something not there to reach: 3.
_EXIT_CODES = {"unavailable": 3}


if __name__ == "__main__":
    sys.exit(main())
