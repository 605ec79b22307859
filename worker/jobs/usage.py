"""What a run of a job used, measured on the worker as it works and written to the usage ledger
(shared/usage/ledger.py) with each lease renewal and at the run's end: GPU seconds since the run started
(the worker's GPU is the job's from its claim to its end, dataset preparation and uploads included), the
step training reached, the images captioned."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from shared.db.models import Job
from shared.usage.ledger import RunUsage, record_job_usage
from worker.gpu_model import gpu_model


class UsageMeter:
    def __init__(self, job: Job, run_token: str, gpu: str | None = None) -> None:
        self.job_id, self.owner, self.kind = job.id, job.owner, job.kind
        self.run_token = run_token
        self.gpu = gpu if gpu is not None else gpu_model()
        self._started = time.monotonic()
        self._steps = 0
        self._first_step: int | None = None  # the step this run started after
        self._images = 0
        self._lock = threading.Lock()  # training reports, the keeper's thread writes

    def steps_trained(self, step: int) -> None:
        """After each optimizer step, with the job's step number (counted on from a resume state)."""
        with self._lock:
            if self._first_step is None:
                self._first_step = step - 1
            self._steps = max(self._steps, step)

    def images_captioned(self, count: int) -> None:
        with self._lock:
            self._images = max(self._images, count)

    def usage(self) -> RunUsage:
        with self._lock:
            steps, images, first = self._steps, self._images, self._first_step or 0
        return RunUsage(
            owner=self.owner,
            kind=self.kind,
            gpu=self.gpu,
            run_token=self.run_token,
            gpu_seconds=time.monotonic() - self._started,
            steps_trained=steps,
            first_step=first,
            images_captioned=images,
        )

    def write(self, session: Session) -> None:
        """In the run's lease transaction (JobLease.transaction), so a run presumed dead adds nothing."""
        record_job_usage(session, self.job_id, self.usage())
