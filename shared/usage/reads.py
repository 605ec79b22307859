"""Reading the ledger back: an owner's usage per day or month, this month's GPU seconds (the quota's), and
all-time totals (the metrics' counters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import UsageRecord

Grouping = Literal["day", "month"]


@dataclass
class Counts:
    gpu_seconds: float = 0.0
    steps_trained: int = 0
    images_captioned: int = 0

    def add(self, gpu_seconds: float, steps_trained: int, images_captioned: int) -> None:
        self.gpu_seconds += gpu_seconds
        self.steps_trained += steps_trained
        self.images_captioned += images_captioned


@dataclass
class Period:
    start: date  # the day, or the month's first day
    totals: Counts = field(default_factory=Counts)
    by_kind_and_gpu: dict[tuple[str, str], Counts] = field(default_factory=dict)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month_start(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def usage_periods(session: Session, owner: str, first: date, last: date, group: Grouping) -> list[Period]:
    """The owner's usage from `first` to `last` (UTC days, both included), oldest first; periods with no
    usage are left out."""
    rows = session.execute(
        select(
            UsageRecord.day,
            UsageRecord.kind,
            UsageRecord.gpu,
            UsageRecord.gpu_seconds,
            UsageRecord.steps_trained,
            UsageRecord.images_captioned,
        ).where(UsageRecord.owner == owner, UsageRecord.day >= first, UsageRecord.day <= last)
    ).all()
    periods: dict[date, Period] = {}
    for day, kind, gpu, seconds, steps, images in rows:
        start = month_start(day) if group == "month" else day
        period = periods.setdefault(start, Period(start))
        period.totals.add(seconds, steps, images)
        period.by_kind_and_gpu.setdefault((kind, gpu), Counts()).add(seconds, steps, images)
    return [periods[start] for start in sorted(periods)]


def gpu_seconds_this_month(session: Session, owner: str, now: datetime | None = None) -> float:
    """What the `gpu_seconds_per_month` quota counts: the calendar month in UTC."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    used = session.scalar(
        select(func.sum(UsageRecord.gpu_seconds)).where(
            UsageRecord.owner == owner, UsageRecord.day >= month_start(today)
        )
    )
    return float(used or 0.0)


def all_time_totals(session: Session) -> list[tuple[str, str, str, Counts]]:
    """(owner, kind, gpu, counts) over the whole ledger: counters that only grow."""
    rows = session.execute(
        select(
            UsageRecord.owner,
            UsageRecord.kind,
            UsageRecord.gpu,
            func.sum(UsageRecord.gpu_seconds),
            func.sum(UsageRecord.steps_trained),
            func.sum(UsageRecord.images_captioned),
        ).group_by(UsageRecord.owner, UsageRecord.kind, UsageRecord.gpu)
    ).all()
    return [
        (owner, kind, gpu, Counts(float(seconds or 0), int(steps or 0), int(images or 0)))
        for owner, kind, gpu, seconds, steps, images in rows
    ]
