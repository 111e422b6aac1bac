"""Prefixed, sortable ids: `agt_01JD…` (ULID body: 48-bit ms time + 80-bit randomness).

Ids made in one process are strictly increasing (monotonic ULID), so ordering by id is
submission order; across replicas the millisecond prefix keeps them roughly ordered.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _next_body() -> str:
    global _last_ms, _last_rand
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            _last_ms = now_ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        return _encode(now_ms, 10) + _encode(_last_rand, 16)


def new_id(prefix: str) -> str:
    return f"{prefix}_{_next_body()}"


AGENT = "agt"
TASK = "tsk"
LOCK = "lck"
BUDGET = "bud"
WORKFLOW_RUN = "wfr"
APPROVAL = "apr"
EVENT = "evt"
