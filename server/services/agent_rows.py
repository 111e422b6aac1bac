"""Agent rows shared by the agent and lease services."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Connection, Row, bindparam, update

from server.domain.statuses import AgentStatus, agent_sources
from server.store.tables import agents

# Calling in (a heartbeat, a claim) makes an agent active: allowed from the statuses the
# transition table lets enter `active`, and from `active` itself. Built once for the claim hot path.
_CALLED_IN_FROM = sorted({s.value for s in agent_sources(AgentStatus.ACTIVE)} | {AgentStatus.ACTIVE.value})
_TOUCH = (
    update(agents)
    .where(agents.c.id == bindparam("b_agent"), agents.c.status.in_(_CALLED_IN_FROM))
    .values(status=AgentStatus.ACTIVE.value, last_heartbeat_at=bindparam("b_now", type_=BigInteger))
    .returning(*agents.c)
)


def touch_agent(conn: Connection, agent_id: str, now: int) -> Row[Any] | None:
    """The agent called in: it is active and heard from now. None if it may not be (gone or stopping)."""
    return conn.execute(_TOUCH, {"b_agent": agent_id, "b_now": now}).first()
