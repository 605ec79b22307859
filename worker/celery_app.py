"""The Celery worker's entry: `celery -A worker.celery_app worker` (what `lorabake worker` runs)."""

from __future__ import annotations

import logging

from shared.queue import TRAIN_TASK, make_celery
from shared.settings import get_settings
from worker import stopping

settings = get_settings()
app = make_celery(settings)
log = logging.getLogger("lorabake.worker")


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> None:
    if stopping.stop_requested():  # delivered while this worker shuts down: the reconciler sends it again
        log.info("job %s: not started, the worker is shutting down", job_id)
        return
    # Imported here so the worker's main process stays light; each child (max 1 task) loads torch itself.
    from worker.jobs.runner import JobRunner

    JobRunner(settings).run(job_id)
