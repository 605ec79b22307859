"""Runs a caption job: caption a stored dataset's images (BLIP, WD14 or a vision-language model) and record
the result as one new caption revision of the dataset (reviewable, and pinned by the training jobs made after
it), with the captioner that wrote it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.config.captioning import CaptionConfig
from shared.datasets.layout import DatasetLayout
from shared.datasets.stored import dataset_layout, record_captions
from shared.db.models import Dataset, JobStatus
from shared.errors import LorabakeError
from shared.jobs.leases import end_job
from worker.captioning import CaptioningCanceled
from worker.captioning.runner import caption_dataset

if TYPE_CHECKING:
    from worker.jobs.runner import ClaimedRun


def run_caption_job(run: ClaimedRun) -> None:
    job, runner = run.job, run.runner
    config = CaptionConfig.model_validate(job.config)

    def read_dataset() -> tuple[DatasetLayout, dict[str, str | None]] | None:
        with runner.sessions() as session:
            dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
            if dataset is None:
                return None
            return dataset_layout(dataset), {image.path: image.caption for image in dataset.images}

    found = runner.retrying("read the dataset", read_dataset)
    if found is None:
        raise LorabakeError("the dataset of this caption job no longer exists", code="dataset_unavailable")
    layout, existing = found
    dataset_dir = run.prepare_dataset(captions=existing, convert=False)

    def on_progress(done: int, total: int) -> None:
        run.keeper.set_status(JobStatus.training)
        run.keeper.report_progress({"step": done, "total_steps": total})
        run.meter.images_captioned(done)

    try:
        captions = caption_dataset(
            layout,
            dataset_dir,
            config,
            models_dir=runner.settings.models_dir,
            existing_captions=existing,
            on_progress=on_progress,
            should_cancel=run.must_stop,
            allow_download=runner.settings.allow_model_downloads,
        )
    except CaptioningCanceled:
        run.stopped()
        return
    run.keeper.flush()
    run.keeper.stop()

    def record() -> None:
        with run.lease.transaction() as session:
            stored = session.get(Dataset, job.dataset_id)
            row = run.lease.job(session)
            run.meter.images_captioned(len(captions))
            run.meter.write(session)  # the run's usage up to its end, with it
            if stored is None:
                raise LorabakeError(
                    "the dataset was deleted while it was captioned", code="dataset_unavailable"
                )
            by_path = {image.path: image.id for image in stored.images}
            # an empty result (no tag passed the thresholds) leaves the folder's `trigger class`
            new_text = {by_path[p]: (c or None) for p, c in captions.items() if p in by_path}
            captioner = config.captioner()
            changed = record_captions(session, stored, new_text, source=config.method, captioner=captioner)
            row.caption_revision = stored.caption_revision
            row.plan = {
                "images": len(captions),
                "changed": changed,
                "captioner": {"method": captioner["method"], "model": captioner["model"]},
            }
            end_job(session, row, JobStatus.succeeded, gpu_model=run.lease.gpu_model)

    runner.retrying("record the captions", record)
    run.outcome = JobStatus.succeeded.value  # for the worker's metrics
