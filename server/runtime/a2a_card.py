"""Reading a remote A2A agent's card: its skills as this project's capabilities, and whether it
is an agent we can talk to (Unavailable when nobody answers, InvalidInput when what answers is no
card). AgentService.spawn uses it as its PeerCards; the a2a runtime re-reads cards to reconnect."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping

import httpx
from a2a.client.card_resolver import parse_agent_card
from a2a.types import AgentCard
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from google.protobuf.json_format import ParseError

from server.domain.capabilities import CAPABILITY, MAX_CAPABILITIES
from server.errors import InvalidInput, Unavailable

CARD_TIMEOUT_S = 5.0
BINDINGS = ["JSONRPC", "HTTP+JSON"]
ERROR_CHARS = 2000
_NOT_CAPABILITY = re.compile(r"[^a-z0-9_.:-]+")


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:ERROR_CHARS]


def capability_name(raw: str) -> str | None:
    """A skill id or tag in this project's capability syntax, or None if nothing valid is left:
    ASCII-folded, lowercase, runs of other characters as '-', trimmed to 64 characters."""
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode().lower()
    name = _NOT_CAPABILITY.sub("-", folded.strip()).strip("-_.:")[:64].rstrip("-_.:")
    return name if CAPABILITY.match(name) else None


def card_capabilities(card: AgentCard) -> list[str]:
    """The card's skill ids, then its skill tags, as capabilities (at most 64, sorted)."""
    found: dict[str, None] = {}
    for raw in [*(skill.id for skill in card.skills), *(tag for skill in card.skills for tag in skill.tags)]:
        name = capability_name(raw)
        if name is not None:
            found.setdefault(name)
    return sorted(list(found)[:MAX_CAPABILITIES])


class PeerCardFetcher:
    """Reads agent cards (AgentService.spawn's PeerCards, and the runtime's reconnects)."""

    def __init__(self, environ: Mapping[str, str] | None = None, timeout_s: float = CARD_TIMEOUT_S) -> None:
        self._environ = os.environ if environ is None else environ
        self.timeout_s = timeout_s

    def headers(self, token_env: str | None) -> dict[str, str]:
        """The bearer header for the peer, from the server environment variable token_env names."""
        if token_env is None:
            return {}
        token = self._environ.get(token_env)
        if not token:
            raise InvalidInput(f"the profile's a2a.token_env names {token_env}, unset in the server's environment")
        return {"Authorization": f"Bearer {token}"}

    async def capabilities(self, url: str, token_env: str | None) -> list[str]:
        return card_capabilities(await self.card(url, token_env))

    async def card(self, url: str, token_env: str | None) -> AgentCard:
        headers = self.headers(token_env)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, follow_redirects=True) as http:
            return await self.read(http, url)

    async def read(self, http: httpx.AsyncClient, url: str) -> AgentCard:
        """GET <url>/.well-known/agent-card.json: Unavailable if nobody answers (or a server error),
        InvalidInput if what answers is not an A2A agent card we can talk to."""
        where = url.rstrip("/") + AGENT_CARD_WELL_KNOWN_PATH
        try:
            response = await http.get(where, timeout=self.timeout_s)
        except httpx.TransportError as exc:  # refused, reset, timed out, bad TLS
            raise Unavailable(f"the A2A agent at {url} cannot be reached: {describe_error(exc)}") from exc
        code = response.status_code
        if code >= 500:
            raise Unavailable(f"the A2A agent at {url} answered HTTP {code} for its card")
        if code in (401, 403):
            raise InvalidInput(
                f"GET {where} answered HTTP {code}: the card needs credentials; put a token in an "
                "environment variable of the server and name it in the profile's a2a.token_env"
            )
        if code != 200:
            raise InvalidInput(f"{url} serves no A2A agent card: GET {where} answered HTTP {code}")
        try:
            card = parse_agent_card(response.json())
        except (ValueError, ParseError) as exc:  # not JSON (ValueError), or not a card
            raise InvalidInput(f"{where} is not an A2A agent card: {describe_error(exc)}") from exc
        if not card.name or not card.supported_interfaces:
            raise InvalidInput(f"{where} is not an A2A agent card: it names no agent or no interface")
        if not any(i.protocol_binding in BINDINGS for i in card.supported_interfaces):
            offered = sorted({i.protocol_binding for i in card.supported_interfaces})
            raise InvalidInput(f"the A2A agent at {url} offers {offered}; agentfleet speaks {BINDINGS}")
        return card
