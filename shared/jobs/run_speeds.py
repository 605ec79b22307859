"""The measured speeds of finished runs (table run_speeds), and the estimates a plan or a queued job shows.

A run is recorded in the transaction that ends it as succeeded, by the worker that ran it (which knows its GPU
model); failed and canceled runs say nothing reliable about speed and are not recorded.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Job, JobKind, RunSpeed, as_utc, utcnow
from shared.jobs.estimates import (
    CaptionObservation,
    Observation,
    RunFeatures,
    predict_captioning,
    predict_training,
)
from shared.jobs.workers import live_workers
from shared.settings import Settings

HISTORY_ROWS = 500  # newest runs a prediction looks through


def features_of(config: dict[str, Any], plan: dict[str, Any], family: str | None) -> RunFeatures:
    """From a job's stored config and plan (or a dry run's): the mean bucket area weighted by samples, else
    the square of the resolution."""
    buckets = plan.get("buckets") or []
    samples = sum(b["samples"] for b in buckets)
    if samples:
        area = sum(b["width"] * b["height"] * b["samples"] for b in buckets) / samples
    else:
        area = float(config.get("resolution", 512)) ** 2
    return RunFeatures(
        family=family,
        precision=str(config.get("mixed_precision", "auto")),
        network=str(config.get("network_type", "lora")),
        rank=int(config.get("network_dim", 32)),
        batch_size=int(plan.get("batch_size") or config.get("batch_size", 1)),
        accumulation=int(
            plan.get("gradient_accumulation_steps") or config.get("gradient_accumulation_steps", 1)
        ),
        area=area,
        steps=int(plan.get("total_steps", 0)),
        images=int(plan.get("images", 0)) + int(plan.get("reg_images", 0)),
    )


def record_run(session: Session, job: Job, gpu_model: str) -> None:
    """Called with a job that just succeeded (in the transaction that says so)."""
    if job.started_at is None or session.get(RunSpeed, job.id) is not None:
        return
    if job.attempts > 1 or job.handed_back:  # its wall time holds the wait between its runs
        return
    seconds = max((utcnow() - as_utc(job.started_at)).total_seconds(), 0.0)
    if job.kind == JobKind.train:
        if not job.steps_per_second or not job.total_steps:
            return  # a one-step run has no measured rate: nothing to learn from it
        family = planned_family(job)
        features = features_of(job.config, job.plan, family)
        overhead = max(seconds - job.total_steps / job.steps_per_second, 0.0)
        row = RunSpeed(
            job_id=job.id,
            kind=JobKind.train.value,
            family=family,
            gpu_model=gpu_model,
            features=features.__dict__,
            steps_per_second=job.steps_per_second,
            overhead_seconds=overhead,
            seconds=seconds,
        )
    elif job.kind == JobKind.caption:
        method = (job.config.get("captioning") or job.config).get("method")
        images = int(job.total_steps or 0)
        if not method or not images:
            return
        row = RunSpeed(
            job_id=job.id,
            kind=JobKind.caption.value,
            gpu_model=gpu_model,
            method=str(method),
            features={"images": images},
            seconds=seconds,
        )
    else:
        return
    session.add(row)


def training_history(session: Session, family: str | None) -> list[Observation]:
    rows = session.scalars(
        select(RunSpeed)
        .where(RunSpeed.kind == JobKind.train.value, RunSpeed.family == family)
        .order_by(RunSpeed.finished_at.desc())
        .limit(HISTORY_ROWS)
    )
    return [
        Observation(RunFeatures(**r.features), r.gpu_model, r.steps_per_second, r.overhead_seconds)
        for r in rows
        if r.steps_per_second
    ]


def caption_history(session: Session, method: str) -> list[CaptionObservation]:
    rows = session.scalars(
        select(RunSpeed)
        .where(RunSpeed.kind == JobKind.caption.value, RunSpeed.method == method)
        .order_by(RunSpeed.finished_at.desc())
        .limit(HISTORY_ROWS)
    )
    return [
        CaptionObservation(method, r.gpu_model, int(r.features.get("images", 0)), r.seconds) for r in rows
    ]


def queue_gpu_model(session: Session, settings: Settings, queue: str) -> str | None:
    """The card most of the queue's live workers report ("cpu" for workers without one); None: none alive."""
    cards = Counter(
        worker.gpus[0][0] if worker.gpus else "cpu"
        for worker in live_workers(session, settings)
        if queue in worker.queues
    )
    return cards.most_common(1)[0][0] if cards else None


def estimate_training(
    session: Session,
    config: dict[str, Any],
    plan: dict[str, Any],
    family: str | None,
    gpu_model: str | None = None,
) -> dict[str, Any]:
    """The plan's `estimate`: the run's expected seconds (training, plus captioning when the config captions
    first) on `gpu_model` (queue_gpu_model), its steps/s, and the basis of each part."""
    features = features_of(config, plan, family)
    training = predict_training(features, training_history(session, family), gpu_model).as_json()
    captioning = config.get("captioning")
    caption_part = None
    if captioning and captioning.get("method") not in (None, "none", "auto"):
        method = str(captioning["method"])
        images = int(plan.get("images", 0))  # at most every training image (keep: only uncaptioned ones)
        caption_part = predict_captioning(method, images, caption_history(session, method), gpu_model)
    total = training["seconds"] + (caption_part["seconds"] if caption_part else 0.0)
    return {"seconds": round(total, 1), "family": family, "training": training, "captioning": caption_part}


def planned_family(job: Job) -> str | None:
    """The family the job was planned for (its estimate records it), else its config's."""
    family = (job.plan.get("estimate") or {}).get("family")
    configured = job.config.get("model_family")
    return family or (configured if configured not in (None, "auto") else None)
