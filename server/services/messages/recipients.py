"""Who a message goes to, and whether the sender may reach them.

`to` holds selectors: an agent id, `parent`, `children`, `tree` (the sender's whole subtree),
`profile:<name>`, `label:<k=v>`, `topic:<name>`, `operators` (people: the admin and operators read
one shared inbox) and `requester` (whoever submitted the task the sender holds).

Staff may message anyone. An agent may always reach its family — parent, children, subtree,
siblings — plus the requester of its work and the operators; anything else (a topic, another
profile's agents, a label outside its family, an unrelated agent) only when its profile's
`permissions.message` has a pattern for that selector (`topic:reviews`, `profile:*`, `*`)."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from sqlalchemy import Connection, select

from server.domain.principal import Principal
from server.domain.statuses import LIVE_AGENT_STATUSES, TaskStatus
from server.errors import InvalidInput, NotFound, PermissionDenied
from server.services.access import AccessPolicy
from server.store.tables import agents, tasks, topic_subscriptions

OPERATORS = "@operators"
MAX_RECIPIENTS = 10_000
_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
_FAMILY_WORDS = ("parent", "children", "tree", "operators", "requester")


@dataclass(frozen=True)
class Resolved:
    recipients: list[str]  # principal ids (and @operators), without duplicates, sender excluded
    topics: list[str]


class RecipientResolver:
    def __init__(self, access: AccessPolicy) -> None:
        self._access = access

    def resolve(self, conn: Connection, sender: Principal, to: list[str]) -> Resolved:
        found: dict[str, None] = {}
        topics: list[str] = []
        family = self._family(conn, sender) if sender.agent_id else set()
        for selector in to:
            ids = self._one(conn, sender, selector.strip())
            if not ids and not selector.startswith("topic:"):
                raise InvalidInput(f"{selector!r} matches no one; nothing was sent")
            if selector.startswith("topic:"):
                topics.append(selector[6:])
            self._check_reach(sender, selector, ids, family)
            for principal_id in ids:
                if principal_id != sender.id:
                    found[principal_id] = None
            if len(found) > MAX_RECIPIENTS:
                raise InvalidInput(f"a message may reach at most {MAX_RECIPIENTS} recipients")
        return Resolved(list(found), topics)

    def _one(self, conn: Connection, sender: Principal, selector: str) -> list[str]:
        if selector == "operators":
            return [OPERATORS]
        if selector == "requester":
            return self._requesters(conn, sender)
        if selector in ("parent", "children", "tree"):
            if sender.agent_id is None:
                raise InvalidInput(f"{selector!r} is relative to an agent; you are {sender.role.value} {sender.id}")
            return self._relatives(conn, sender.agent_id, selector)
        kind, _, value = selector.partition(":")
        if kind == "topic" and value:
            rows = conn.execute(select(topic_subscriptions.c.principal).where(topic_subscriptions.c.topic == value))
            return list(rows.scalars())
        if kind == "profile" and value:
            query = select(agents.c.id).where(agents.c.profile == value, agents.c.status.in_(_LIVE))
            return list(conn.execute(query).scalars())
        if kind == "label" and "=" in value:
            key, _, wanted = value.partition("=")
            rows = conn.execute(select(agents.c.id, agents.c.labels).where(agents.c.status.in_(_LIVE))).all()
            return [row.id for row in rows if (row.labels or {}).get(key) == wanted]
        if selector.startswith("agt_"):
            if conn.execute(select(agents.c.id).where(agents.c.id == selector)).first() is None:
                raise NotFound(f"no agent {selector}")
            return [selector]
        raise InvalidInput(
            f"unknown recipient {selector!r}: use an agent id, parent, children, tree, profile:<name>, "
            "label:<k=v>, topic:<name>, operators or requester"
        )

    @staticmethod
    def _requesters(conn: Connection, sender: Principal) -> list[str]:
        if sender.agent_id is None:
            raise InvalidInput("requester is whoever submitted the task you hold; you hold none")
        rows = conn.execute(
            select(tasks.c.submitted_by).where(
                tasks.c.agent_id == sender.agent_id, tasks.c.status == TaskStatus.RUNNING.value
            )
        )
        return sorted(set(rows.scalars()))

    @staticmethod
    def _relatives(conn: Connection, agent_id: str, which: str) -> list[str]:
        if which == "parent":
            parent = conn.execute(select(agents.c.parent_id).where(agents.c.id == agent_id)).scalar()
            if parent is None:
                raise InvalidInput("you have no parent agent; message operators instead")
            return [parent]
        found: list[str] = []
        layer = [agent_id]
        while layer:
            children = list(conn.execute(select(agents.c.id).where(agents.c.parent_id.in_(layer))).scalars())
            found.extend(children)
            if which == "children" or len(found) > MAX_RECIPIENTS:
                break
            layer = children
        return found

    def _family(self, conn: Connection, sender: Principal) -> set[str]:
        assert sender.agent_id is not None
        parent = conn.execute(select(agents.c.parent_id).where(agents.c.id == sender.agent_id)).scalar()
        family = set(self._relatives(conn, sender.agent_id, "tree"))
        if parent is not None:
            family.add(parent)
            family.update(conn.execute(select(agents.c.id).where(agents.c.parent_id == parent)).scalars())
        family.update(self._requesters(conn, sender))
        family.add(OPERATORS)
        return family

    def _check_reach(self, sender: Principal, selector: str, ids: list[str], family: set[str]) -> None:
        if sender.can_operate:
            return
        if sender.agent_id is None:
            raise PermissionDenied(f"{sender.role.value} principals read; they do not send messages")
        if selector in _FAMILY_WORDS:
            return
        profile = self._access.profile_of(sender)
        patterns = profile.permissions.message if profile is not None else ()
        if any(fnmatchcase(selector, pattern) for pattern in patterns):
            return
        if selector.startswith("topic:"):
            raise PermissionDenied(
                f"profile {profile.ref if profile else sender.profile} may not use {selector}; "
                "its permissions.message lists the topics it may"
            )
        outside = [i for i in ids if i not in family]
        if outside:
            raise PermissionDenied(
                f"{selector} reaches {outside[0]}, outside your family (parent, children, subtree, siblings); "
                "a profile's permissions.message may allow more"
            )

    def may_use_topic(self, principal: Principal, topic: str) -> None:
        if principal.agent_id is None:
            return
        profile = self._access.profile_of(principal)
        patterns = profile.permissions.message if profile is not None else ()
        if not any(fnmatchcase(f"topic:{topic}", pattern) for pattern in patterns):
            raise PermissionDenied(f"your profile's permissions.message does not list topic:{topic}")
