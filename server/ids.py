"""Prefixed, sortable ids: `agt_06AQ…` — 48-bit millisecond time + 80 random bits, in base32hex
(0-9, A-V), whose alphabet is in ASCII order, so ids sort by creation time.

Ids made in one process are strictly increasing (the random part counts up within a millisecond),
so ordering by id is submission order; across replicas the time prefix keeps them roughly ordered.
"""

from __future__ import annotations

import base64
import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_MASK = (1 << 80) - 1


def _next_body() -> str:
    global _last_ms, _last_rand
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_rand = (_last_rand + 1) & _RAND_MASK
        else:
            _last_ms = now_ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        raw = ((now_ms << 80) | _last_rand).to_bytes(16, "big")
    return base64.b32hexencode(raw)[:26].decode()


def new_id(prefix: str) -> str:
    return f"{prefix}_{_next_body()}"


AGENT = "agt"
TASK = "tsk"
LOCK = "lck"
BUDGET = "bud"
WORKFLOW_RUN = "wfr"
APPROVAL = "apr"
EVENT = "evt"
HOLD = "hld"
USAGE = "usg"
TOKEN = "tkn"
MESSAGE = "msg"
THREAD = "thr"
TRIGGER = "trg"
TRIGGER_RUN = "trr"
CHANNEL = "ntc"
DELIVERY = "ntd"
