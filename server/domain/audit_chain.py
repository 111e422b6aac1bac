"""The audit trail's hash chains: each row's hash covers its content and the previous row's hash
in its chain, so editing or deleting any row breaks every link after it in that chain.

One chain would make every write transaction in the fleet take turns at commit; on PostgreSQL the
trail is split into CHAINS_PG chains and each transaction appends to one at random, so concurrent
writers rarely wait for each other. SQLite writes one transaction at a time anyway: one chain."""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of the first row
CHAINS_PG = 16
CHAINED = ("chain", "seq", "at", "principal", "role", "action", "subject", "detail", "prev_hash")
# Fields added in 0.4.0: hashed when set, so rows written before them keep their hashes, and
# setting or clearing one afterwards still changes the hash.
CHAINED_IF_SET = ("reason", "before_digest", "after_digest")


def row_hash(row: Any) -> str:
    """sha256 of the canonical JSON of a row's chained fields (a mapping or a result row)."""
    get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
    body = {name: get(name) for name in CHAINED}
    body.update({name: value for name in CHAINED_IF_SET if (value := get(name)) is not None})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def state_digest(state: Any) -> str:
    """sha256 of a stored row's canonical JSON (a mapping or a result row): what it was, in 64 characters."""
    mapping = state if isinstance(state, dict) else dict(state._mapping)
    canonical = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
