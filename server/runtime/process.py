"""One process agent at the OS level: start it (an argument list, its own session and home, an
environment built from an allow-list, rlimits, capped log files), recognise it again by pid plus
start time, signal its process group, describe how it ended."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from server.domain.profile import ProcessSpec, ProfileLimits
from server.runtime import confine

STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# These words at the head of a command mean "this server's own installation", so a profile
# works the same in a venv, a container or CI without naming absolute paths.
_OWN_PYTHON = {"python", "python3"}
_OWN_CLI = "agentfleet"


@dataclass(frozen=True)
class Confinement:
    """The Landlock sandbox of one process agent: what it may read and run, what it may write."""

    read_exec: tuple[Path, ...]
    read_write: tuple[Path, ...]


@dataclass(frozen=True)
class LaunchPlan:
    agent_id: str
    argv: list[str]
    env: dict[str, str]
    home: Path
    limits: ProfileLimits
    confinement: Confinement | None = None


@dataclass(frozen=True)
class Started:
    pid: int
    identity: str  # boot id and start time: a reused pid never matches
    popen: subprocess.Popen[bytes]


def agent_home(data_dir: Path, agent_id: str) -> Path:
    return data_dir / "agents" / agent_id


def resolve_command(command: tuple[str, ...] | list[str], search_path: str | None) -> list[str]:
    # -P: the agent's home is the working directory and may hold anything, so it is never put on
    # the import path (a `server/` package written there would otherwise replace this server's).
    head, *rest = command
    if head == _OWN_CLI:
        return [sys.executable, "-P", "-m", "server.cli", *rest]
    if head in _OWN_PYTHON:
        return [sys.executable, "-P", *rest]
    return [shutil.which(head, path=search_path) or head, *rest]


def child_environment(
    spec: ProcessSpec, home: Path, url: str, token: str, agent_id: str, server_env: Mapping[str, str]
) -> dict[str, str]:
    """Only what the profile allows, then the agent's own identity; never the server's secrets."""
    env = {name: server_env[name] for name in spec.env_passthrough if name in server_env}
    env.update(spec.env)
    env.setdefault("HOME", str(home))
    env["TMPDIR"] = str(home / "tmp")  # its own: the sandbox has no shared /tmp
    env["PYTHONSAFEPATH"] = "1"  # nor do the Python programs it runs import from their working directory
    env["AGENTFLEET_URL"] = url
    env["AGENTFLEET_TOKEN"] = token
    env["AGENTFLEET_AGENT_ID"] = agent_id
    return env


def plan_launch(
    spec: ProcessSpec,
    limits: ProfileLimits,
    data_dir: Path,
    agent_id: str,
    url: str,
    token: str,
    server_env: Mapping[str, str] | None = None,
    confined: bool = True,
) -> LaunchPlan:
    server_env = os.environ if server_env is None else server_env
    home = agent_home(data_dir, agent_id)
    env = child_environment(spec, home, url, token, agent_id, server_env)
    confinement = None
    if confined:
        readable = confine.software_paths(env.get("PATH"), spec.allow_read)
        confine.check_outside(data_dir, readable)
        confinement = Confinement(tuple(readable), (home, *map(Path, spec.allow_write)))
    return LaunchPlan(agent_id, resolve_command(spec.command, env.get("PATH")), env, home, limits, confinement)


def _in_child(limits: ProfileLimits, ruleset_fd: int | None) -> Callable[[], None]:
    wanted: list[tuple[int, int]] = []
    if limits.cpu_seconds is not None:
        wanted.append((resource.RLIMIT_CPU, limits.cpu_seconds))
    if limits.memory_mb is not None:
        wanted.append((resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024))
    if limits.open_files is not None:
        wanted.append((resource.RLIMIT_NOFILE, limits.open_files))

    as_root = os.geteuid() == 0
    last_cap = confine.last_capability()

    def in_child() -> None:  # runs between fork and exec: plain syscalls only
        for kind, value in wanted:
            resource.setrlimit(kind, (value, value))
        if ruleset_fd is not None:
            confine.drop_privileges(ruleset_fd, as_root, last_cap)

    return in_child


def _ruleset(plan: LaunchPlan) -> confine.Ruleset | None:
    if plan.confinement is None:
        return None
    abi = confine.landlock_abi()
    if abi < 1:
        raise OSError(
            "this kernel offers no Landlock, so the agent cannot be confined; run the server on Linux 5.13+ "
            "with Landlock enabled, or set AGENTFLEET_AGENT_CONFINEMENT=none to run process agents unconfined "
            "(they can then read this server's secrets)"
        )
    return confine.Ruleset(abi, plan.confinement.read_exec, plan.confinement.read_write)


def start(plan: LaunchPlan) -> Started:
    """Fork and exec. Raises OSError when the command cannot be started (not found, not executable)."""
    plan.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (plan.home / "tmp").mkdir(exist_ok=True, mode=0o700)
    ruleset = _ruleset(plan)
    try:
        with (plan.home / STDOUT_LOG).open("ab") as out, (plan.home / STDERR_LOG).open("ab") as err:
            popen = subprocess.Popen(  # noqa: S603 - an argument list from a profile, never a shell
                plan.argv,
                cwd=plan.home,
                env=plan.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: signals reach its children too
                close_fds=True,
                preexec_fn=_in_child(plan.limits, None if ruleset is None else ruleset.fd),  # noqa: PLW1509
            )
    except subprocess.SubprocessError as exc:  # the sandbox could not be applied in the child
        raise OSError(f"could not confine the agent: {exc}") from exc
    finally:
        if ruleset is not None:
            ruleset.close()
    return Started(popen.pid, identity(popen.pid) or "", popen)


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return "boot"


def identity(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks>` of a live (not zombie) process; None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    if not fields or fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of stat, counted from after the name


def is_running(pid: int, expected_identity: str) -> bool:
    return bool(expected_identity) and identity(pid) == expected_identity


def signal_group(pid: int, signum: signal.Signals) -> None:
    """Signal the agent's process group (it leads its own session); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def kill_session(pid: int) -> None:
    """SIGKILL everything in the agent's session: its process group and any groups its commands
    were put in (agentfleet worker runs each command in a group of its own, in the same session)."""
    signal_group(pid, signal.SIGKILL)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(entry) == pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def _session_of(proc: Path) -> int | None:
    try:
        fields = (proc / "stat").read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[3]) if len(fields) > 3 else None  # field 6 of stat: the session id


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (status unknown: adopted after a server restart)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def trim_log(path: Path, max_bytes: int) -> None:
    """Keep the newest half of a log that outgrew max_bytes. The child appends (O_APPEND), so its
    next write lands after what is kept."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size <= max_bytes:
        return
    with path.open("r+b") as log:
        log.seek(size - max_bytes // 2)
        kept = log.read()
        log.seek(0)
        log.write(kept)
        log.truncate(len(kept))


def log_tail(home: Path, name: str, max_bytes: int = 4000) -> str | None:
    path = home / name
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - max_bytes))
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return None
