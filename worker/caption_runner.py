"""Runs a caption job: caption a stored dataset's images with BLIP or WD14 and record the result as one
new caption revision of the dataset (reviewable, and pinned by the training jobs made after it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from shared.captioning import CaptionConfig
from shared.datasets import dataset_layout, record_captions
from shared.errors import LorabakeError
from shared.jobs import set_status
from shared.models import Dataset, Job, JobStatus
from worker.captioning import CaptioningCanceled
from worker.captioning.runner import caption_dataset

if TYPE_CHECKING:
    from worker.job_runner import JobRunner


def run_caption_job(runner: JobRunner, job: Job, workdir: Path) -> None:
    config = CaptionConfig.model_validate(job.config)
    with runner.sessions() as session:
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise LorabakeError(
                "the dataset of this caption job no longer exists", code="dataset_unavailable"
            )
        layout = dataset_layout(dataset)
        existing = {image.path: image.caption for image in dataset.images}
    dataset_dir = runner.prepare_for(job, workdir, captions=existing, convert=False)

    interval = runner.settings.progress_interval_seconds
    last = 0.0

    def on_progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < interval and done < total:
            return
        last = now
        with runner.sessions() as session:
            row = session.get(Job, job.id)
            assert row is not None
            if row.status != JobStatus.training:
                set_status(session, row, JobStatus.training)
            row.step, row.total_steps = done, total
            session.commit()

    def should_cancel() -> bool:
        with runner.sessions() as session:
            row = session.get(Job, job.id)
            return bool(row and row.cancel_requested)

    try:
        captions = caption_dataset(
            layout,
            dataset_dir,
            config,
            models_dir=runner.settings.models_dir,
            existing_captions=existing,
            on_progress=on_progress,
            should_cancel=should_cancel,
            allow_download=runner.settings.allow_model_downloads,
        )
    except CaptioningCanceled:
        runner.finish(job.id, JobStatus.canceled)
        return
    with runner.sessions() as session:
        dataset = session.get(Dataset, job.dataset_id)
        row = session.get(Job, job.id)
        assert dataset is not None and row is not None
        by_path = {image.path: image.id for image in dataset.images}
        # an empty result (no tag passed the thresholds) leaves the folder's `trigger class`
        new_text = {by_path[p]: (c or None) for p, c in captions.items() if p in by_path}
        changed = record_captions(session, dataset, new_text, source=config.method)
        row.caption_revision = dataset.caption_revision
        row.plan = {"images": len(captions), "changed": changed}
        set_status(session, row, JobStatus.succeeded)
        session.commit()
