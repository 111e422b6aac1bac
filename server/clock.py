"""Injectable time. Services read time only from a Clock, so tests drive it without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

MICROS = 1_000_000


class Clock(Protocol):
    def now_us(self) -> int:
        """Microseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1_000


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start_us: int = 1_767_225_600 * MICROS) -> None:  # 2026-01-01T00:00:00Z
        self._now = start_us

    def now_us(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * MICROS)


def to_iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / MICROS, UTC).isoformat().replace("+00:00", "Z")


def from_iso(value: str) -> int:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * MICROS)
