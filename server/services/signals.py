"""In-process wake-ups for parked claims. Waking is a hint, never the truth: a woken claimer
re-runs its claim against the store. Each ready task wakes at most one matching waiter, so 2,000
parked claimers do not stampede the store for one task."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from server.clock import MICROS


@dataclass(eq=False)
class Waiter:
    agent_id: str
    capabilities: frozenset[str] | None  # None until the first claim attempt has read them: match all
    event: asyncio.Event = field(default_factory=asyncio.Event)
    # Runs payloads as code, so it takes only executable tasks, which a wake-up does not tell.
    runs_payloads: bool = False

    def matches(self, required: frozenset[str], pinned: str | None) -> bool:
        if pinned is not None and pinned != self.agent_id:
            return False
        return self.capabilities is None or required <= self.capabilities

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True


class TaskSignals:
    def __init__(self) -> None:
        self.origin = uuid.uuid4().hex[:12]  # tells our own PostgreSQL notifications from others'
        self._waiters: list[Waiter] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self.closed = False  # shutting down: parked claims return instead of waiting again

    @property
    def parked(self) -> int:
        return len(self._waiters)

    @contextmanager
    def park(self, agent_id: str, capabilities: frozenset[str] | None) -> Iterator[Waiter]:
        waiter = Waiter(agent_id, capabilities)
        self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def task_ready(self, required: frozenset[str], pinned: str | None, ready_at_us: int, now_us: int) -> None:
        """A task became claimable (or will at ready_at). Wake one waiter that can take it."""
        delay = (ready_at_us - now_us) / MICROS
        if delay <= 0:
            self._wake_one(required, pinned)
            return
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._wake_one(required, pinned)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _wake_one(self, required: frozenset[str], pinned: str | None) -> None:
        chosen: int | None = None
        for index, waiter in enumerate(self._waiters):
            if waiter.event.is_set() or not waiter.matches(required, pinned):
                continue
            if waiter.runs_payloads:
                # It may not be allowed this task, so it never stands in for a waiter that is:
                # the few payload runners each look for themselves.
                waiter.event.set()
            elif chosen is None:
                chosen = index
        if chosen is not None:
            waiter = self._waiters.pop(chosen)
            self._waiters.append(waiter)  # to the back: the next task goes to the next waiter
            waiter.event.set()

    def wake_all(self) -> None:
        for waiter in self._waiters:
            waiter.event.set()

    def close(self) -> None:
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self.wake_all()


class KeyedSignals:
    """In-process wake-ups by id: lock requests waiting in the queue (by lock id) and A2A streams
    following a task (by task id). The truth is in the store (a grant made by whoever freed the
    resources, a task's new state); waking only tells the watcher to look."""

    def __init__(self) -> None:
        self._watchers: dict[str, list[asyncio.Event]] = {}
        self.closed = False

    @property
    def watched(self) -> int:
        return len(self._watchers)

    @contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers.setdefault(key, []).append(event)
        try:
            yield event
        finally:
            events = self._watchers.get(key, [])
            if event in events:
                events.remove(event)
            if not events:
                self._watchers.pop(key, None)

    def wake(self, keys: list[str]) -> None:
        for key in keys:
            for event in self._watchers.get(key, []):
                event.set()

    def wake_all(self) -> None:
        for events in self._watchers.values():
            for event in events:
                event.set()

    def close(self) -> None:
        self.closed = True
        self.wake_all()
