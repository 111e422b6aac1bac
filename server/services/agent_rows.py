"""Agent rows shared by the agent and lease services and the door (server/services/gate.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Connection, Row, bindparam, or_, update

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


# Any call by an agent is a sign of life. Writing it on every call would make each call a row
# write; writing it only when the last one is a second old (or the agent is not active) keeps it
# to one write per agent per second, far inside any heartbeat timeout (5 s at least).
_HEARD_FROM_EVERY_US = 1_000_000
_HEARD_FROM = (
    update(agents)
    .where(
        agents.c.id == bindparam("b_agent"),
        agents.c.status.in_(_CALLED_IN_FROM),
        or_(
            agents.c.status != AgentStatus.ACTIVE.value,
            agents.c.last_heartbeat_at.is_(None),
            agents.c.last_heartbeat_at < bindparam("b_stale", type_=BigInteger),
        ),
    )
    .values(status=AgentStatus.ACTIVE.value, last_heartbeat_at=bindparam("b_now", type_=BigInteger))
)


def touch_agent(conn: Connection, agent_id: str, now: int) -> Row[Any] | None:
    """The agent called in: it is active and heard from now. None if it may not be (gone or stopping)."""
    return conn.execute(_TOUCH, {"b_agent": agent_id, "b_now": now}).first()


def heard_from(conn: Connection, agent_id: str, now: int) -> None:
    """Any call with the agent's token: mark it alive (and active again if it was silent)."""
    conn.execute(_HEARD_FROM, {"b_agent": agent_id, "b_now": now, "b_stale": now - _HEARD_FROM_EVERY_US})
