"""Budgets: scopes, periods, enforcement and thresholds, as pure values."""

from __future__ import annotations

import re
from calendar import monthrange
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.clock import MICROS
from server.errors import InvalidInput

GLOBAL = "global"
_SCOPE = re.compile(r"^(?:global|agent:agt_[0-9A-V]{26}|profile:[a-z][a-z0-9_-]{0,63}|pool:[a-z][a-z0-9_.-]{0,63})$")
POOL_NAME = r"^[a-z][a-z0-9_.-]{0,63}$"


class Period(StrEnum):
    TOTAL = "total"
    DAILY = "daily"
    MONTHLY = "monthly"

    def start(self, now_us: int) -> int:
        """The UTC calendar boundary the current period began at (0 for `total`)."""
        if self is Period.TOTAL:
            return 0
        now = datetime.fromtimestamp(now_us / MICROS, UTC)
        day = 1 if self is Period.MONTHLY else now.day
        return int(datetime(now.year, now.month, day, tzinfo=UTC).timestamp()) * MICROS

    def end(self, now_us: int) -> int | None:
        """When the current period ends (None: never)."""
        if self is Period.TOTAL:
            return None
        start = self.start(now_us)
        if self is Period.DAILY:
            return start + 86_400 * MICROS
        first = datetime.fromtimestamp(start / MICROS, UTC)
        return start + monthrange(first.year, first.month)[1] * 86_400 * MICROS


class Enforcement(StrEnum):
    HARD = "hard"  # reservations, dispatch and spawns that would pass the limit fail
    SOFT = "soft"  # warns only


class ThresholdAction(StrEnum):
    NOTIFY = "notify"
    WARN = "warn"
    BLOCK = "block"  # hard budgets: no new dispatch or spawn in the scope


class HoldStatus(StrEnum):
    HELD = "held"
    SETTLED = "settled"  # released with the money spent under it recorded
    EXPIRED = "expired"


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: int = Field(ge=1, le=100, description="of the limit, spent plus reserved")
    action: ThresholdAction


DEFAULT_THRESHOLDS = (
    Threshold(percent=70, action=ThresholdAction.NOTIFY),
    Threshold(percent=90, action=ThresholdAction.WARN),
    Threshold(percent=100, action=ThresholdAction.BLOCK),
)


def check_thresholds(thresholds: tuple[Threshold, ...]) -> tuple[Threshold, ...]:
    percents = [t.percent for t in thresholds]
    if len(set(percents)) != len(percents):
        raise InvalidInput("thresholds: each percent may appear once")
    return tuple(sorted(thresholds, key=lambda t: t.percent))


@dataclass(frozen=True)
class Scope:
    kind: str  # global | agent | profile | pool
    name: str  # empty for global

    @classmethod
    def parse(cls, text: str) -> Scope:
        if not _SCOPE.match(text):
            raise InvalidInput(
                f"scope {text!r} is not one of: global, agent:<agent id>, profile:<profile name>, pool:<pool name>"
            )
        kind, _, name = text.partition(":")
        return cls(kind, name)

    def __str__(self) -> str:
        return GLOBAL if self.kind == GLOBAL else f"{self.kind}:{self.name}"


def agent_scopes(lineage: list[str], profile: str, pools: list[str]) -> list[str]:
    """Every scope whose spend an agent's spend counts in: the fleet, itself and each ancestor
    (lineage: self first), its profile and its pools."""
    return [GLOBAL, *(f"agent:{a}" for a in lineage), f"profile:{profile}", *(f"pool:{p}" for p in pools)]


def committed_percent(spent: int, reserved: int, limit: int) -> float:
    if limit == 0:
        return 100.0 if spent + reserved > 0 else 0.0
    return (spent + reserved) * 100 / limit


def block_percent(thresholds: list[dict[str, Any]]) -> int | None:
    """The lowest `block` threshold, if any (thresholds as stored: [{percent, action}])."""
    blocks = [int(t["percent"]) for t in thresholds if t["action"] == ThresholdAction.BLOCK]
    return min(blocks) if blocks else None
