"""The worker's MCP client: `tools/call` over Streamable HTTP in the stateless 2026-07-28 envelope.

The SDK's `mcp.Client` costs ~1.4 s of imports (it pulls the server side in too), and a process
agent's spawn-to-first-call budget is 500 ms, so the worker speaks the few bytes it needs itself
(httpx, ~0.2 s): one POST per call, no session, nothing to re-establish after a server restart.
The wire shape is what `mcp.Client(mode="auto")` sends to `agentfleet serve`.

Outcomes of a call: the tool's structured result; `ToolError` (the tool answered `isError`, its
text starts with a stable code); `Unauthorized` (HTTP 401/403: the token is unknown or revoked);
`Unreachable` (connection failures, timeouts, 5xx: worth retrying); `ProtocolError` (anything
else). `call_retrying` retries `Unreachable` with capped exponential backoff and `rate_limited`
after the wait the server names.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import ssl
import time
from typing import Any

import httpx

PROTOCOL_VERSION = "2026-07-28"
CALL_TIMEOUT_S = 30.0
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 5.0
RETRY_IN = re.compile(r"retry in ([0-9.]+) ?s")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

log = logging.getLogger("agentfleet.worker")


class ToolError(Exception):
    """The tool refused: `code` is the stable prefix (lease_expired, permission_denied, …)."""

    def __init__(self, tool: str, text: str) -> None:
        super().__init__(f"{tool}: {text}")
        self.text = text
        self.code = text.split(":", 1)[0].strip()


class Unauthorized(Exception):
    """The server did not accept the token (unknown, expired or revoked)."""


class Unreachable(Exception):
    """No answer worth reading: connection refused or dropped, timeout, 5xx."""


class ProtocolError(Exception):
    """An answer this client does not understand."""


class Backoff:
    """0.2 s, 0.4 s, … doubling up to 5 s."""

    def __init__(self) -> None:
        self.next_s = BACKOFF_FIRST_S

    def step(self) -> float:
        delay, self.next_s = self.next_s, min(self.next_s * 2, BACKOFF_CAP_S)
        return delay


# Plain http: a context that verifies but trusts no CA, so nothing is sent unverified, and the
# ~100 ms of loading the system's CA store (httpx's default) is not spent at every start.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


# How long a worker tries to reach a server that has never answered before it says the URL is wrong.
FIRST_CONTACT_S = float(os.environ.get("AGENTFLEET_CONNECT_TIMEOUT_S") or 30.0)


class NeverReached(Exception):
    """The server never answered at all: most likely the URL is wrong."""


class FleetClient:
    def __init__(self, url: str, token: str) -> None:
        self.endpoint = url.rstrip("/") + "/mcp"
        self._ids = itertools.count(1)
        self._meta = {
            "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
            "io.modelcontextprotocol/clientInfo": {"name": "agentfleet-worker", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        self._http = httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": PROTOCOL_VERSION,
            },
            timeout=CALL_TIMEOUT_S,
            verify=True if self.endpoint.startswith("https:") else _NO_TLS,
        )
        self.reached = False  # any answer from the server at all, once: then unreachable means "restarting"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout: float = CALL_TIMEOUT_S, traceparent: str | None = None
    ) -> dict[str, Any]:
        """One tools/call; the structured result, or one of this module's exceptions. With a
        `traceparent` (the task's), the call joins that trace (MCP `_meta.traceparent`)."""
        request_id = next(self._ids)
        meta = self._meta if traceparent is None else {**self._meta, "traceparent": traceparent}
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta},
        }
        try:
            response = await self._http.post(
                self.endpoint,
                json=body,
                headers={"MCP-Method": "tools/call", "MCP-Name": tool},
                timeout=timeout,
            )
        except httpx.TransportError as exc:  # connect, read, write, pool, timeouts, dropped connections
            raise Unreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        self.reached = True
        if response.status_code in (401, 403):
            raise Unauthorized(f"HTTP {response.status_code} from {self.endpoint}: {response.text[:200]}")
        if response.status_code in RETRYABLE_STATUS:
            raise Unreachable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise ProtocolError(f"HTTP {response.status_code} from {self.endpoint}: {response.text[:300]}")
        message = _message(response, request_id)
        if "error" in message:
            raise ProtocolError(f"{tool}: JSON-RPC error {message['error']}")
        result = message.get("result") or {}
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict))
            raise ToolError(tool, text or "unknown error")
        structured = result.get("structuredContent")
        if not isinstance(structured, dict):
            raise ProtocolError(f"{tool} answered without structured content")
        return structured

    async def call_retrying(
        self, tool: str, arguments: dict[str, Any], timeout: float = CALL_TIMEOUT_S, traceparent: str | None = None
    ) -> dict[str, Any]:
        """`call`, retried while the server is unreachable or rate-limits: forever once it has answered
        (it is restarting), for FIRST_CONTACT_S before it ever has (then the URL is likely wrong)."""
        backoff = Backoff()
        started = time.monotonic()
        while True:
            try:
                return await self.call(tool, arguments, timeout, traceparent)
            except Unreachable as exc:
                if not self.reached and time.monotonic() - started > FIRST_CONTACT_S:
                    raise NeverReached(
                        f"no answer from {self.endpoint} for {FIRST_CONTACT_S:.0f} s ({exc}): check --url / "
                        "AGENTFLEET_URL, and that `agentfleet serve` runs there"
                    ) from exc
                delay = backoff.step()
                log.warning("%s: server unreachable (%s); retrying in %.1f s", tool, exc, delay)
            except ToolError as exc:
                if exc.code != "rate_limited":
                    raise
                named = RETRY_IN.search(exc.text)
                delay = float(named.group(1)) if named else 1.0
                log.warning("%s: rate limited; retrying in %.2f s", tool, delay)
            await asyncio.sleep(delay)


def _message(response: httpx.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response to `request_id`, from a JSON body or an SSE stream."""
    content_type = response.headers.get("content-type", "")
    try:
        if content_type.startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:"):
                    candidate = json.loads(line[5:])
                    if isinstance(candidate, dict) and candidate.get("id") == request_id:
                        return candidate
            raise ProtocolError("the event stream ended without a response")
        message = response.json()
    except ValueError as exc:
        raise ProtocolError(f"unreadable response ({content_type}): {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"unexpected response: {str(message)[:200]}")
    return message
