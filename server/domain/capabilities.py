"""Capability names: what an agent can do and a task needs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from server.errors import InvalidInput

CAPABILITY = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_CAPABILITIES = 64


def validate_capabilities(values: Sequence[str]) -> list[str]:
    """Sorted, deduplicated, well-formed; or invalid_input naming the bad ones."""
    if len(values) > MAX_CAPABILITIES:
        raise InvalidInput(f"at most {MAX_CAPABILITIES} capabilities")
    bad = [v for v in values if not isinstance(v, str) or not CAPABILITY.match(v)]
    if bad:
        raise InvalidInput(f"malformed capabilities {bad}: use lowercase letters, digits and _.:- (max 64 chars)")
    return sorted(set(values))
