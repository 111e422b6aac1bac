"""Retry delay: exponential backoff with full jitter (delay drawn uniformly from 0 to the capped
exponential), which spreads retries of tasks that failed together."""

from __future__ import annotations

import random
from typing import Protocol


class Random(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def backoff_bound_ms(failed_attempts: int, base_ms: int, cap_ms: int) -> int:
    """The upper bound of the delay after `failed_attempts` failures (1 = the first failure)."""
    exponent = max(failed_attempts - 1, 0)
    return min(cap_ms, base_ms * (2 ** min(exponent, 40)))


def backoff_delay_us(failed_attempts: int, base_ms: int, cap_ms: int, rng: Random = random) -> int:
    return int(rng.uniform(0, backoff_bound_ms(failed_attempts, base_ms, cap_ms)) * 1000)


def dispatch_key(priority_rank: int, first_ready_at_us: int, aging_step_us: int) -> int:
    """Place in line. Lower goes first. Within a priority this is FIFO by readiness; across
    priorities, a task that has been ready `aging_step` longer outranks the next level up, so low
    work always reaches the front eventually."""
    return priority_rank * aging_step_us + first_ready_at_us
