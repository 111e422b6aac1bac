"""Is a webhook really from whoever holds its trigger's secret? HMAC-SHA256 over the raw body,
sent as `sha256=<hex>` (GitHub's X-Hub-Signature-256, or our X-Agentfleet-Signature-256), or the
secret itself as a bearer token for senders that cannot sign. Compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE_HEADERS = ("x-hub-signature-256", "x-agentfleet-signature-256")
DELIVERY_HEADERS = ("x-github-delivery", "x-agentfleet-delivery", "idempotency-key")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_authentic(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    for name in SIGNATURE_HEADERS:
        given = headers.get(name)
        if given is not None:
            return hmac.compare_digest(given.strip().encode(), sign(secret, body).encode())
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and hmac.compare_digest(token.strip().encode(), secret.encode())


def delivery_id(headers: Mapping[str, str]) -> str | None:
    for name in DELIVERY_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()[:100]
    return None
