"""What a process agent may touch: Landlock (Linux 5.13+) confines its whole process tree to
read-and-execute the software it runs, read-and-write its own home, and nothing else: not the
server's data dir (admin token, SQLite file, other agents' homes), not /proc (the server's
environment, command line and open files), not /tmp. On Landlock ABI 6+ it also may not signal
processes outside its sandbox. Started by root, it also loses every capability.

The ruleset is built in the server (paths opened there), then applied between fork and exec with
plain system calls. Nothing here can widen: Landlock only ever narrows, and is inherited by every
process the agent starts. See docs/security.md."""

from __future__ import annotations

import ctypes
import os
import site
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import server
from server.errors import Unavailable

# System call numbers: the same on x86_64 and the generic table (aarch64, riscv64).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
_CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")

# Filesystem access rights, by the ABI that introduced them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_DIR_CHANGES = sum(1 << bit for bit in range(4, 13))  # remove/make dirs, files, sockets, fifos, devices, links
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(number, *args))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (other OS, old kernel, disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _syscall(_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError:
        return 0


@dataclass(frozen=True)
class Rights:
    handled: int
    read_exec_dir: int
    read_write_dir: int
    file_read_exec: int
    file_read_write: int
    scoped: int
    attr_size: int


def _rights(abi: int) -> Rights:
    file_rights = _EXECUTE | _WRITE_FILE | _READ_FILE | (_TRUNCATE if abi >= 3 else 0)
    handled = file_rights | _READ_DIR | _DIR_CHANGES | (_REFER if abi >= 2 else 0)
    handled |= _IOCTL_DEV if abi >= 5 else 0
    return Rights(
        handled=handled,
        read_exec_dir=_EXECUTE | _READ_FILE | _READ_DIR,
        read_write_dir=handled & ~(_IOCTL_DEV),
        file_read_exec=_EXECUTE | _READ_FILE,
        file_read_write=_READ_FILE | _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0),
        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
        attr_size=24 if abi >= 6 else (16 if abi >= 4 else 8),
    )


def software_paths(search_path: str | None, extra: Iterable[str] = ()) -> list[Path]:
    """What an agent needs to read and run: the system's folders, this Python and its packages,
    the folders on its PATH, and what its profile adds."""
    found = [*map(Path, _SYSTEM_READ), *map(Path, extra)]
    found += [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]
    found += [Path(p) for p in site.getsitepackages()]
    # Where this server's own packages live (an editable install: the source checkout), not the
    # whole import path: the server's working directory is on it and may be anyone's home.
    found += [Path(server.__file__).resolve().parents[1]]
    found += [Path(entry) for entry in (search_path or "").split(os.pathsep) if entry and Path(entry).is_absolute()]
    unique = {path.resolve() for path in found if path.exists()}
    return sorted(unique)


def check_outside(data_dir: Path, readable: Sequence[Path]) -> None:
    """The data dir must not lie inside anything an agent may read, or confinement would hand it
    the admin token and the store."""
    data_dir = data_dir.resolve()
    for path in readable:
        if data_dir == path or path in data_dir.parents:
            raise Unavailable(
                f"AGENTFLEET_DATA_DIR must not lie inside a folder process agents may read: the data dir "
                f"{data_dir} is inside {path}"
            )


class Ruleset:
    """An open Landlock ruleset: build it in the server, apply it in the child, then close it."""

    def __init__(self, abi: int, read_exec: Sequence[Path], read_write: Sequence[Path]) -> None:
        self._rights = _rights(abi)
        attr = _RulesetAttr(self._rights.handled, 0, self._rights.scoped)
        self.fd = _syscall(_CREATE_RULESET, ctypes.byref(attr), self._rights.attr_size, 0)
        try:
            for path in read_exec:
                self._allow(path, self._rights.read_exec_dir, self._rights.file_read_exec)
            for path in [*read_write, *map(Path, _DEVICES)]:
                self._allow(path, self._rights.read_write_dir, self._rights.file_read_write)
        except OSError:
            os.close(self.fd)
            raise

    def _allow(self, path: Path, dir_rights: int, file_rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # absent on this machine: nothing to allow
        try:
            rights = dir_rights if path.is_dir() else file_rights
            rule = _PathBeneathAttr(rights, fd)
            _syscall(_ADD_RULE, self.fd, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.fd)


def last_capability() -> int:
    """Read in the server: the child, between fork and exec, may not read files."""
    try:
        return int(_CAP_LAST_CAP.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 40


def drop_privileges(ruleset_fd: int, as_root: bool, last_cap: int) -> None:
    """In the child, between fork and exec: no capabilities (root included), no new privileges
    through setuid programs, and the Landlock sandbox."""
    if as_root:
        for cap in range(last_cap + 1):
            _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if _libc.syscall(_RESTRICT_SELF, ruleset_fd, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
