"""The base model catalogue in the database: workers write what they have, the API reads it. Captioner
models are in it too (kind `captioner`), kept by the same rules, and never taken for a base model.

A worker replaces its own list on every report. A model stays known after its workers are gone (a
deployment whose workers all restart still takes jobs for it) until `model_catalogue_days` without a
report, or until the last worker that had it reports without it (removed from the disk on purpose).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from shared.catalogue.captioners import CAPTIONER_KIND, CAPTIONER_NAMES, DOWNLOAD_PATTERNS, download_command
from shared.catalogue.families import HUB_REPO_ID, SINGLE_FILE_SUFFIXES, path_problem
from shared.catalogue.last_report import last_report, report_note
from shared.catalogue.scan import ModelEntry
from shared.config.captioning import MODEL_FIELD, CaptionConfig
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
        row.family, row.prediction_type, row.captioner = entry.family, entry.prediction_type, entry.captioner
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
    captioner: str | None = None  # kind captioner: the method it serves


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
            r.captioner,
        )
        for r in records
    ]


def _listed(retention: timedelta) -> ColumnElement[bool]:
    """A base model reported within `retention` (not a captioner)."""
    return (BaseModelRecord.last_seen_at >= utcnow() - retention) & (BaseModelRecord.kind != CAPTIONER_KIND)


def catalogue_family(session: Session, name: str, retention: timedelta) -> str | None:
    """The family workers reported for `name`; None when it is not listed or its family is read only when a
    job loads it (a .ckpt)."""
    return session.scalar(
        select(BaseModelRecord.family).where(BaseModelRecord.name == name, _listed(retention))
    )


def catalogue_name(session: Session, name: str, retention: timedelta) -> str:
    """The listed name a job means: `name` itself, or a single file's full name when `name` is its stem
    ("flux1-dev" for flux1-dev.safetensors, as users name the model they downloaded); `name` otherwise."""
    if PurePosixPath(name).suffix.lower() in SINGLE_FILE_SUFFIXES:
        return name
    candidates = [name, *(name + suffix for suffix in SINGLE_FILE_SUFFIXES)]
    listed = set(
        session.scalars(
            select(BaseModelRecord.name).where(BaseModelRecord.name.in_(candidates), _listed(retention))
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
        select(BaseModelRecord.name).where(BaseModelRecord.name == name, _listed(retention))
    )
    if known is not None or (allow_downloads and HUB_REPO_ID.match(name)):
        return
    names = list(session.scalars(select(BaseModelRecord.name).where(_listed(retention))))
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


class UnknownCaptioner(LorabakeError):
    status_code = 422
    code = "unknown_caption_model"


def check_captioner(
    session: Session,
    config: CaptionConfig,
    field_prefix: str,
    retention: timedelta,
    allow_downloads: bool,
    models_dir: Path,
    chosen_by: str | None = None,
) -> None:
    """Raise UnknownCaptioner (422 naming the config's `*_model` field, with the `hf download` command for a
    hub id) unless a worker reported the model `config.method` loads, or it is a hub id and workers may
    download models (check_base_model's policy). `chosen_by`: what chose the method (`method 'auto'`)."""
    ref = config.model_ref()
    if ref is None:  # `auto`: checked once the family chose
        return
    method = config.method
    field = field_prefix + MODEL_FIELD[method]
    name = _models_dir_name(ref, models_dir)
    # where the worker looks: models_dir/<ref>, models_dir/<org>_<name> (Kohya's tagger folders), the cache
    candidates = [name, name.replace("/", "_")] if HUB_REPO_ID.match(name) else [name]
    listed = (BaseModelRecord.kind == CAPTIONER_KIND) & (BaseModelRecord.last_seen_at >= utcnow() - retention)
    found = set(
        session.scalars(select(BaseModelRecord.captioner).where(BaseModelRecord.name.in_(candidates), listed))
    )
    if method in found:
        return
    kind = CAPTIONER_NAMES[method]
    subject = f"{field} {ref!r}" + (f" (the {kind} captioner {chosen_by} chose)" if chosen_by else "")
    command = download_command(ref, models_dir, DOWNLOAD_PATTERNS[method]) if HUB_REPO_ID.match(ref) else None
    details = {"field": field, "method": method, "caption_model": ref, "download_command": command}
    if found:
        other = CAPTIONER_NAMES.get(str(found.pop()), "another")
        raise UnknownCaptioner(f"{subject} is a {other} model, not a {kind} one", details=details)
    if allow_downloads and command is not None:
        return
    same_kind = session.scalars(
        select(BaseModelRecord.name)
        .where(listed, BaseModelRecord.captioner == method)
        .order_by(BaseModelRecord.name)
    )
    known = list(same_kind)[:MAX_CLOSE_MATCHES]
    hints = [
        f"to get it, run on a worker: {command}"
        if command
        else "put its folder in a worker's models folder (they report it within seconds)"
    ]
    if known:
        hints.append(f"the {kind} models they have: " + ", ".join(repr(k) for k in known))
    raise UnknownCaptioner(
        f"{subject} is not a captioner this deployment's workers have; " + "; ".join(hints),
        details={**details, "known": known},
    )


def _models_dir_name(ref: str, models_dir: Path) -> str:
    """`ref` as the catalogue lists it: an absolute path inside the models folder becomes relative to it."""
    path = PurePosixPath(ref)
    if path.is_absolute() and path.is_relative_to(PurePosixPath(models_dir.as_posix())):
        return path.relative_to(PurePosixPath(models_dir.as_posix())).as_posix()
    return ref
