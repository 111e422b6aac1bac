"""The server's own process, made harder to read from beside it: its memory, environment, command
line and open files are closed to other processes of its user (PR_SET_DUMPABLE 0), the files it
creates are its user's only (umask 077), and secrets read at start are taken out of the
environment its children would inherit."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_PR_SET_DUMPABLE = 4
# Read once into Settings at the entry point; nothing later needs them in os.environ.
SECRET_VARIABLES = ("AGENTFLEET_ADMIN_TOKEN", "AGENTFLEET_DATABASE_URL", "AGENTFLEET_TOKEN", "AGENTFLEET_METRICS_TOKEN")


def harden_server_process() -> None:
    os.umask(0o077)
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
