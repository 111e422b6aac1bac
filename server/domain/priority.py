"""Task priorities. Stored as an integer rank so ORDER BY rank is the dispatch order."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _BY_RANK[rank]


_RANKS = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}
_BY_RANK = {rank: p for p, rank in _RANKS.items()}
