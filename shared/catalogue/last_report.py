"""What the workers' reports say, for a refusal of an unknown base model: the truth ("a worker reported
3 s ago and listed none") rather than a guess ("no worker has reported") that a running worker belies."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.catalogue.captioners import CAPTIONER_KIND
from shared.db.models import BaseModelRecord, ModelReport, WorkerModel, as_utc, utcnow

SHOWN_NAMES = 5
# Workers watch their models folder (shared/catalogue/watch.py): a new model is reported within seconds.
SEEN_WITHIN = "a model put in a worker's models folder is reported within seconds"


@dataclass(frozen=True)
class LastReport:
    seconds_ago: float
    reporters: int  # workers (or other holders) with a report on record
    listed: list[str]  # the base models the newest report listed


def last_report(session: Session) -> LastReport | None:
    """The newest report of base models on record, None when no worker has reported yet."""
    newest = session.execute(
        select(ModelReport.worker_id, ModelReport.reported_at)
        .order_by(ModelReport.reported_at.desc())
        .limit(1)
    ).first()
    if newest is None:
        return None
    reporters = session.scalar(select(func.count()).select_from(ModelReport)) or 0
    captioners = select(BaseModelRecord.name).where(BaseModelRecord.kind == CAPTIONER_KIND)
    listed = session.scalars(
        select(WorkerModel.name)
        .where(WorkerModel.worker_id == newest.worker_id, WorkerModel.name.not_in(captioners))
        .order_by(WorkerModel.name)
    )
    age = max(0.0, (utcnow() - as_utc(newest.reported_at)).total_seconds())
    return LastReport(age, reporters, list(listed))


def age_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def report_note(report: LastReport | None) -> str:
    if report is None:
        return "no worker has reported its base models yet (start a worker with models in its models folder)"
    who = "a worker" if report.reporters == 1 else f"the last of {report.reporters} workers"
    shown = ", ".join(repr(n) for n in report.listed[:SHOWN_NAMES]) or "none"
    if len(report.listed) > SHOWN_NAMES:
        shown += f" and {len(report.listed) - SHOWN_NAMES} more"
    age = age_text(report.seconds_ago)
    return f"{who} reported its base models {age} ago, listing {shown} ({SEEN_WITHIN})"
