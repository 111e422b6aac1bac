"""The audit trail's hash chain: each row's hash covers its content and the previous row's hash,
so editing or deleting any row breaks every link after it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of the first row
CHAINED = ("seq", "at", "principal", "role", "action", "subject", "detail", "prev_hash")


def row_hash(row: Any) -> str:
    """sha256 of the canonical JSON of a row's chained fields (a mapping or a result row)."""
    get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
    body = {name: get(name) for name in CHAINED}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
