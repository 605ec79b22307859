"""What a training child records about its job (the runner calls these): its step and speed, the steps it
trained, how the job ended, its GPU memory. In multiprocess mode (worker/metrics/__init__.py) each call
writes to this process's files; otherwise the values stay in memory, unserved (`lorabake train`, tests).

Recording never stops a job: a metric that cannot be written (a full disk) is logged and skipped.
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import Counter, Gauge

from worker.metrics.gpu import device_memory
from worker.metrics.process_dir import VARIABLE

log = logging.getLogger("lorabake.worker")
OUTCOMES = ("succeeded", "failed", "canceled", "handed_back", "lost")
GPU_SAMPLE_SECONDS = 1.0  # reading the allocator's statistics builds a dict each time: not every step

# registry=None: in multiprocess mode the server reads the files, not a registry of this process
JOB_STEP = Gauge(
    "lorabake_worker_job_step",
    "Step reached by each job this worker is training.",
    ["job_id"],
    multiprocess_mode="livesum",
    registry=None,
)
JOB_STEPS_PER_SECOND = Gauge(
    "lorabake_worker_job_steps_per_second",
    "Training speed of each job this worker is training (the engine's recent average).",
    ["job_id"],
    multiprocess_mode="livesum",
    registry=None,
)
STEPS = Counter("lorabake_worker_steps", "Optimizer steps this worker trained.", registry=None)
JOBS_FINISHED = Counter(
    "lorabake_worker_jobs_finished",
    "Jobs this worker ran to an end, by outcome (handed_back: an outage sent it back to the queue; lost: its "
    "lease was lost, or its end could not be recorded).",
    ["outcome"],
    registry=None,
)
GPU_ALLOCATED = Gauge(
    "lorabake_worker_gpu_memory_allocated_bytes",
    "GPU memory held by tensors of this worker's training processes, per CUDA device.",
    ["device"],
    multiprocess_mode="livesum",
    registry=None,
)
GPU_PEAK = Gauge(
    "lorabake_worker_gpu_memory_max_allocated_bytes",
    "Most GPU memory a training process of this worker held at once during its job, per CUDA device.",
    ["device"],
    multiprocess_mode="livemax",
    registry=None,
)
for _outcome in OUTCOMES:
    JOBS_FINISHED.labels(_outcome)  # each outcome is a series from the start, at 0, as rate() wants

_gpu_sampled_at = float("-inf")


def _record_gpu_memory(force: bool = False) -> None:
    global _gpu_sampled_at
    now = time.monotonic()
    if not force and now - _gpu_sampled_at < GPU_SAMPLE_SECONDS:
        return
    _gpu_sampled_at = now
    for memory in device_memory():
        GPU_ALLOCATED.labels(memory.device).set(memory.allocated)
        GPU_PEAK.labels(memory.device).set(memory.peak)


def job_progress(job_id: str, step: int, steps_per_second: float | None) -> None:
    """After every optimizer step."""
    try:
        STEPS.inc()
        JOB_STEP.labels(job_id).set(step)
        if steps_per_second is not None:
            JOB_STEPS_PER_SECOND.labels(job_id).set(steps_per_second)
        _record_gpu_memory()
    except Exception:
        log.warning("job %s: could not record its metrics", job_id, exc_info=True)


def job_ended(job_id: str, outcome: str) -> None:
    try:
        JOBS_FINISHED.labels(outcome).inc()
        _record_gpu_memory(force=True)  # the job's peak
        if VARIABLE not in os.environ:  # in multiprocess mode the series go with this process, after its job
            JOB_STEP.remove(job_id)
            JOB_STEPS_PER_SECOND.remove(job_id)
    except Exception:
        log.warning("job %s: could not record its end in the metrics", job_id, exc_info=True)
