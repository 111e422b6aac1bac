"""Scorecards: how an agent, a profile, one profile version or a task type did over a period,
against the period before; and two versions of a profile side by side with significance tests.

Everything is counted by the store over the finished tasks of the window, found through
(agent_id, finished_at) or (type, finished_at) indexes; percentiles are nearest-rank values read
with ORDER BY … OFFSET, so no task list is ever loaded into Python. The rank test of a comparison
reads at most RANK_SAMPLE run times per version, the most recent, and says so."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, select

from server.clock import MICROS, Clock, to_iso
from server.domain.money import usd
from server.domain.principal import Principal
from server.domain.statuses import TaskStatus
from server.domain.views import (
    FeedbackCounts,
    Percentiles,
    ProfileComparison,
    ScorecardView,
    ScoreFigures,
    Significance,
)
from server.errors import InvalidInput, NotFound, PermissionDenied
from server.services.agents import descendants
from server.store.database import Database
from server.store.tables import agents, profiles, task_feedback, tasks, usage

FINISHED = [TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.DEAD.value]
PERIOD = re.compile(r"^([1-9][0-9]{0,3})([hdw])$")
_UNIT_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_PERIOD_S = 366 * 86_400
RANK_SAMPLE = 5000
ALPHA = 0.05
SCOPE = re.compile(r"^(agent|profile|task_type):(.{1,150})$")


@dataclass(frozen=True)
class Window:
    since: int
    until: int


def parse_period(period: str) -> int:
    """Seconds in `period`: 24h, 7d, 4w (at most a year)."""
    match = PERIOD.match(period)
    if match is None:
        raise InvalidInput(f"period {period!r}: a number and h, d or w, e.g. 24h, 7d, 4w")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_PERIOD_S:
        raise InvalidInput(f"period {period!r}: at most a year (366d)")
    return seconds


def _nearest_rank(conn: Connection, value: ColumnElement[Any], where: list[Any], count: int, q: float) -> float | None:
    if count == 0:
        return None
    offset = max(0, math.ceil(q * count) - 1)
    found = conn.execute(select(value).where(*where).order_by(value).limit(1).offset(offset)).scalar()
    return None if found is None else found / MICROS


def _percentiles(conn: Connection, value: ColumnElement[Any], where: list[Any], count: int) -> Percentiles:
    return Percentiles(
        p50=_nearest_rank(conn, value, where, count, 0.5), p95=_nearest_rank(conn, value, where, count, 0.95)
    )


def figures(conn: Connection, scope_filter: list[Any], window: Window) -> ScoreFigures:
    """One window's figures for the tasks `scope_filter` selects."""
    where = [
        *scope_filter,
        tasks.c.finished_at >= window.since,
        tasks.c.finished_at < window.until,
        # Only ended tasks have finished_at; `<>` rather than IN keeps the planner on the scope's
        # (…, finished_at) index instead of the queue's status index.
        tasks.c.status != TaskStatus.CANCELLED.value,
    ]
    by_status = {
        row.status: (int(row.n), int(row.retries or 0))
        for row in conn.execute(
            select(tasks.c.status, func.count().label("n"), func.sum(tasks.c.attempts - 1).label("retries"))
            .where(*where)
            .group_by(tasks.c.status)
        )
    }
    completed, failed, dead = (by_status.get(s, (0, 0))[0] for s in FINISHED)
    finished = completed + failed + dead
    retries = sum(r for _, r in by_status.values())
    started = [*where, tasks.c.started_at.is_not(None)]
    timed = conn.execute(select(func.count()).select_from(tasks).where(*started)).scalar_one() if finished else 0
    ids = select(tasks.c.id).where(*where)
    cost_micros, fb = 0, (0, 0, 0, None)
    if finished:  # an empty window costs one query, not six
        cost_micros = int(
            conn.execute(
                select(func.coalesce(func.sum(usage.c.cost_micros), 0)).where(usage.c.task_id.in_(ids))
            ).scalar_one()
        )
        fb = tuple(
            conn.execute(
                select(
                    func.count(case((task_feedback.c.good.is_(True), 1))),
                    func.count(case((task_feedback.c.good.is_(False), 1))),
                    func.count(task_feedback.c.score),
                    func.avg(task_feedback.c.score),
                ).where(task_feedback.c.task_id.in_(ids))
            ).one()
        )
    return ScoreFigures(
        since=to_iso(window.since) or "",
        until=to_iso(window.until) or "",
        completed=completed,
        failed=failed,
        dead=dead,
        finished=finished,
        success_rate=completed / finished if finished else None,
        retries_per_task=retries / finished if finished else None,
        queue_wait_s=_percentiles(conn, tasks.c.started_at - tasks.c.created_at, started, timed),
        run_time_s=_percentiles(conn, tasks.c.finished_at - tasks.c.started_at, started, timed),
        cost_usd=str(usd(cost_micros)),
        cost_per_task_usd=str(usd(cost_micros // finished)) if finished else None,
        feedback=FeedbackCounts(
            good=int(fb[0]),
            bad=int(fb[1]),
            scored=int(fb[2]),
            mean_score=None if fb[3] is None else round(float(fb[3]), 4),
        ),
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def _money(text: str | None) -> float | None:
    return None if text is None else float(Decimal(text))


def difference(new: ScoreFigures, old: ScoreFigures) -> dict[str, float | None]:
    return {
        "finished": float(new.finished - old.finished),
        "success_rate": _minus(new.success_rate, old.success_rate),
        "retries_per_task": _minus(new.retries_per_task, old.retries_per_task),
        "run_time_p50_s": _minus(new.run_time_s.p50, old.run_time_s.p50),
        "queue_wait_p50_s": _minus(new.queue_wait_s.p50, old.queue_wait_s.p50),
        "cost_per_task_usd": _minus(_money(new.cost_per_task_usd), _money(old.cost_per_task_usd)),
        "mean_score": _minus(new.feedback.mean_score, old.feedback.mean_score),
    }


# -- significance ------------------------------------------------------------------------------
def proportion_test(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Significance:
    """Two-sided two-proportion z-test with the pooled proportion."""
    test = "two-proportion z-test"
    sample = f"{n_a} and {n_b} finished tasks"
    if n_a == 0 or n_b == 0:
        return Significance(test=test, statistic=None, p_value=None, significant=False, sample=sample)
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return Significance(test=test, statistic=0.0, p_value=1.0, significant=False, sample=sample)
    z = (successes_b / n_b - successes_a / n_a) / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return Significance(test=test, statistic=round(z, 4), p_value=p, significant=p < ALPHA, sample=sample)


def rank_test(a: list[float], b: list[float]) -> Significance:
    """Two-sided Mann-Whitney U (normal approximation, ties averaged and corrected for, with a
    continuity correction). The statistic is U of sample b."""
    test = "Mann-Whitney U (normal approximation)"
    sample = f"run times of {len(a)} and {len(b)} tasks (the most recent, at most {RANK_SAMPLE} each)"
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        return Significance(test=test, statistic=None, p_value=None, significant=False, sample=sample)
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    n = n_a + n_b
    rank_sum_b = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        size = j - i + 1
        ties += size**3 - size
        rank_sum_b += rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 1)
        i = j + 1
    u_b = rank_sum_b - n_b * (n_b + 1) / 2
    mean = n_a * n_b / 2
    variance = n_a * n_b / 12 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0))
    if variance <= 0:
        return Significance(test=test, statistic=round(u_b, 4), p_value=1.0, significant=False, sample=sample)
    z = max(0.0, abs(u_b - mean) - 0.5) / math.sqrt(variance)
    p = min(1.0, math.erfc(z / math.sqrt(2)))
    return Significance(test=test, statistic=round(u_b, 4), p_value=p, significant=p < ALPHA, sample=sample)


def _p(test: Significance) -> str:
    if test.p_value is None:
        return "too little data to test"
    verdict = "significant" if test.significant else "not significant"
    return f"p = {test.p_value:.2g}, {test.test}: {verdict}"


def verdict(va: str, vb: str, a: ScoreFigures, b: ScoreFigures, success: Significance, durations: Significance) -> str:
    if not a.finished or not b.finished:
        missing = ", ".join(v for v, f in ((va, a), (vb, b)) if not f.finished)
        return f"Nothing to compare: no finished tasks for {missing} in this period."
    parts = []
    assert a.success_rate is not None and b.success_rate is not None
    points = (b.success_rate - a.success_rate) * 100
    if abs(points) < 0.05:
        parts.append(f"{vb} and {va} complete the same share of their tasks ({b.success_rate:.1%}; {_p(success)})")
    else:
        more = "more" if points > 0 else "fewer"
        parts.append(
            f"{vb} completes {abs(points):.1f} percentage points {more} of its tasks than {va} "
            f"({b.success_rate:.1%} vs {a.success_rate:.1%}; {_p(success)})"
        )
    if a.run_time_s.p50 is not None and b.run_time_s.p50 is not None:
        parts.append(f"median run time {b.run_time_s.p50:.3g} s vs {a.run_time_s.p50:.3g} s ({_p(durations)})")
    cost_a, cost_b = _money(a.cost_per_task_usd), _money(b.cost_per_task_usd)
    if cost_a and cost_b is not None:
        change = (cost_b - cost_a) / cost_a * 100
        if abs(change) >= 0.5:
            parts.append(f"costs {abs(change):.0f} % {'more' if change > 0 else 'less'} per task")
        else:
            parts.append("costs the same per task")
    return "; ".join(parts) + "."


class ScorecardService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def _windows(self, period: str) -> tuple[Window, Window]:
        length = parse_period(period) * MICROS
        now = self._clock.now_us()
        return Window(now - length, now), Window(now - 2 * length, now - length)

    async def scorecard(self, principal: Principal, scope: str, period: str = "7d") -> ScorecardView:
        current, previous = self._windows(period)
        return await self._db.read(self._scorecard_tx, principal, scope, period, current, previous)

    def _scorecard_tx(
        self, conn: Connection, principal: Principal, scope: str, period: str, current: Window, previous: Window
    ) -> ScorecardView:
        scope_filter = self._scope_filter(conn, principal, scope)
        now_figures = figures(conn, scope_filter, current)
        before = figures(conn, scope_filter, previous)
        return ScorecardView(
            scope=scope, period=period, current=now_figures, previous=before, trend=difference(now_figures, before)
        )

    @staticmethod
    def _scope_filter(conn: Connection, principal: Principal, scope: str) -> list[Any]:
        match = SCOPE.match(scope)
        if match is None:
            raise InvalidInput(
                f"scope {scope!r} is not one of: agent:<id>, profile:<name>, profile:<name>@<version>, task_type:<type>"
            )
        kind, name = match.groups()
        if kind == "agent":
            if conn.execute(select(agents.c.id).where(agents.c.id == name)).first() is None:
                raise NotFound(f"no agent {name}")
            if not principal.sees_all and name not in (principal.id, *descendants(conn, principal.id)):
                raise PermissionDenied(f"scorecard {scope}: you see the scorecards of yourself and your descendants")
            return [tasks.c.agent_id == name]
        if not principal.sees_all:
            raise PermissionDenied(f"scorecard {scope}: an agent sees the scorecards of itself and its descendants")
        if kind == "task_type":
            return [tasks.c.type == name]
        profile, _, version = name.partition("@")
        known = select(profiles.c.version).where(profiles.c.name == profile)
        if version:
            known = known.where(profiles.c.version == version)
        if conn.execute(known.limit(1)).first() is None:
            raise NotFound(f"no profile {name}; profile_list shows what exists")
        members = select(agents.c.id).where(agents.c.profile == profile)
        if version:
            members = members.where(agents.c.profile_version == version)
        return [tasks.c.agent_id.in_(members)]

    async def compare(
        self, principal: Principal, name: str, version_a: str, version_b: str, period: str = "7d"
    ) -> ProfileComparison:
        if not principal.sees_all:
            raise PermissionDenied("profile_compare is for admins, operators and viewers")
        if version_a == version_b:
            raise InvalidInput("version_a and version_b are the same version; compare two")
        current, _ = self._windows(period)
        return await self._db.read(self._compare_tx, principal, name, version_a, version_b, period, current)

    def _compare_tx(
        self,
        conn: Connection,
        principal: Principal,
        name: str,
        version_a: str,
        version_b: str,
        period: str,
        window: Window,
    ) -> ProfileComparison:
        filter_a = self._scope_filter(conn, principal, f"profile:{name}@{version_a}")
        filter_b = self._scope_filter(conn, principal, f"profile:{name}@{version_b}")
        a, b = figures(conn, filter_a, window), figures(conn, filter_b, window)
        success = proportion_test(a.completed, a.finished, b.completed, b.finished)
        durations = rank_test(self._run_times(conn, filter_a, window), self._run_times(conn, filter_b, window))
        return ProfileComparison(
            name=name,
            version_a=version_a,
            version_b=version_b,
            period=period,
            a=a,
            b=b,
            difference=difference(b, a),
            success_rate_test=success,
            run_time_test=durations,
            verdict=verdict(version_a, version_b, a, b, success, durations),
        )

    @staticmethod
    def _run_times(conn: Connection, scope_filter: list[Any], window: Window) -> list[float]:
        where = and_(
            *scope_filter,
            tasks.c.finished_at >= window.since,
            tasks.c.finished_at < window.until,
            tasks.c.status != TaskStatus.CANCELLED.value,
            tasks.c.started_at.is_not(None),
        )
        rows = conn.execute(
            select(tasks.c.finished_at - tasks.c.started_at)
            .where(where)
            .order_by(tasks.c.finished_at.desc())
            .limit(RANK_SAMPLE)
        ).scalars()
        return [value / MICROS for value in rows]
