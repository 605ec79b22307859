"""The base model catalogue in the database: workers write what they have, the API reads it.

A worker replaces its own list on every report. A model stays known after its workers are gone (a
deployment whose workers all restart still takes jobs for it) until `model_catalogue_days` without a
report, or until the last worker that had it reports without it (removed from the disk on purpose).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.catalogue.families import HUB_REPO_ID, SINGLE_FILE_SUFFIXES, path_problem
from shared.catalogue.last_report import last_report, report_note
from shared.catalogue.scan import ModelEntry
from shared.db.models import BaseModelRecord, ModelReport, WorkerModel, WorkerProcess, as_utc, utcnow
from shared.errors import LorabakeError

MAX_CLOSE_MATCHES = 5


def record_models(session: Session, worker_id: str, entries: Iterable[ModelEntry]) -> None:
    """`worker_id` has exactly `entries` now. Commits."""
    now = utcnow()
    entries = list(entries)
    names = {e.name for e in entries}
    had = set(session.scalars(select(WorkerModel.name).where(WorkerModel.worker_id == worker_id)))
    for entry in entries:
        row = session.get(BaseModelRecord, entry.name)
        if row is None:
            row = BaseModelRecord(name=entry.name, first_seen_at=now)
            session.add(row)
        row.family, row.prediction_type = entry.family, entry.prediction_type
        row.kind, row.source, row.size_bytes, row.last_seen_at = (
            entry.kind,
            entry.source,
            entry.size_bytes,
            now,
        )
    dropped = had - names
    if dropped:
        session.execute(
            delete(WorkerModel).where(WorkerModel.worker_id == worker_id, WorkerModel.name.in_(dropped))
        )
        still_held = set(session.scalars(select(WorkerModel.name).where(WorkerModel.name.in_(dropped))))
        gone = dropped - still_held
        if gone:
            session.execute(delete(BaseModelRecord).where(BaseModelRecord.name.in_(gone)))
    session.add_all(WorkerModel(worker_id=worker_id, name=name) for name in sorted(names - had))
    report = session.get(ModelReport, worker_id)
    if report is None:
        session.add(ModelReport(worker_id=worker_id, reported_at=now))
    else:
        report.reported_at = now
    session.commit()


def forget_worker_models(session: Session, worker_ids: Iterable[str]) -> None:
    """A worker that is gone no longer has anything; the models themselves stay known. No commit."""
    ids = list(worker_ids)
    if ids:
        session.execute(delete(WorkerModel).where(WorkerModel.worker_id.in_(ids)))
        session.execute(delete(ModelReport).where(ModelReport.worker_id.in_(ids)))


def forget_unseen_models(session: Session, older_than: timedelta) -> None:
    """Models no worker has reported for `older_than`. No commit."""
    session.execute(delete(BaseModelRecord).where(BaseModelRecord.last_seen_at < utcnow() - older_than))


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    family: str | None
    prediction_type: str | None
    kind: str
    source: str
    size_bytes: int
    last_seen_at: datetime
    workers: list[str] = field(default_factory=list)  # alive now and holding it


def list_models(session: Session, retention: timedelta, alive_within_seconds: float) -> list[CatalogueModel]:
    now = utcnow()
    alive_since = now - timedelta(seconds=alive_within_seconds)
    holders: dict[str, list[str]] = {}
    rows = session.execute(
        select(WorkerModel.name, WorkerModel.worker_id)
        .join(WorkerProcess, WorkerProcess.id == WorkerModel.worker_id)
        .where(WorkerProcess.last_seen_at >= alive_since)
        .order_by(WorkerModel.worker_id)
    )
    for name, worker in rows:
        holders.setdefault(name, []).append(worker)
    records = session.scalars(
        select(BaseModelRecord)
        .where(BaseModelRecord.last_seen_at >= now - retention)
        .order_by(BaseModelRecord.name)
    )
    return [
        CatalogueModel(
            r.name,
            r.family,
            r.prediction_type,
            r.kind,
            r.source,
            r.size_bytes,
            as_utc(r.last_seen_at),
            holders.get(r.name, []),
        )
        for r in records
    ]


def catalogue_family(session: Session, name: str, retention: timedelta) -> str | None:
    """The family workers reported for `name`; None when it is not listed or its family is read only when a
    job loads it (a .ckpt)."""
    return session.scalar(
        select(BaseModelRecord.family).where(
            BaseModelRecord.name == name, BaseModelRecord.last_seen_at >= utcnow() - retention
        )
    )


def catalogue_name(session: Session, name: str, retention: timedelta) -> str:
    """The listed name a job means: `name` itself, or a single file's full name when `name` is its stem
    ("flux1-dev" for flux1-dev.safetensors, as users name the model they downloaded); `name` otherwise."""
    if PurePosixPath(name).suffix.lower() in SINGLE_FILE_SUFFIXES:
        return name
    candidates = [name, *(name + suffix for suffix in SINGLE_FILE_SUFFIXES)]
    listed = set(
        session.scalars(
            select(BaseModelRecord.name).where(
                BaseModelRecord.name.in_(candidates), BaseModelRecord.last_seen_at >= utcnow() - retention
            )
        )
    )
    return next((c for c in candidates if c in listed), name)


class UnknownBaseModel(LorabakeError):
    status_code = 422
    code = "unknown_base_model"


def check_base_model(session: Session, name: str, retention: timedelta, allow_downloads: bool) -> None:
    """Raise UnknownBaseModel (422 naming config.base_model, with the closest known names) unless `name`
    is in the catalogue, or is a hub id and workers may download models."""
    problem = path_problem(name)
    if problem is not None:
        raise UnknownBaseModel(
            f"config.base_model {problem}",
            code="invalid_base_model",
            details={"field": "config.base_model", "close_matches": []},
        )
    known = session.scalar(
        select(BaseModelRecord.name).where(
            BaseModelRecord.name == name, BaseModelRecord.last_seen_at >= utcnow() - retention
        )
    )
    if known is not None or (allow_downloads and HUB_REPO_ID.match(name)):
        return
    names = list(
        session.scalars(
            select(BaseModelRecord.name).where(BaseModelRecord.last_seen_at >= utcnow() - retention)
        )
    )
    close = difflib.get_close_matches(name, names, n=MAX_CLOSE_MATCHES, cutoff=0.5)
    report = last_report(session)
    hints = [report_note(report)]  # what the reports say and when the last one came, never a guess
    if close:
        hints.append("did you mean " + ", ".join(repr(c) for c in close) + "?")
    elif names:
        hints.append("GET /v1/models lists the ones this deployment has")
    raise UnknownBaseModel(
        f"config.base_model {name!r} is not a base model this deployment has; " + "; ".join(hints),
        details={
            "field": "config.base_model",
            "close_matches": close,
            "last_report_seconds_ago": None if report is None else round(report.seconds_ago, 1),
        },
    )
