"""Turning an upload into a queued job: check everything first, then store, then record, then enqueue.

Bad input fails in the first step, before any object or row exists, so nothing is half-stored.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from api.errors import describe_fields, field_errors
from api.state import AppState
from api.uploads import ReceivedFile
from shared.errors import LorabakeError
from shared.intake import inspect_dataset_zip
from shared.jobs import add_event, set_status
from shared.models import Job, JobStatus, new_id
from shared.plan import compute_plan
from shared.queue import enqueue_training
from shared.spec import TrainingConfig

log = logging.getLogger("lorabake.api")


def parse_config(text: object) -> TrainingConfig:
    if not isinstance(text, str) or not text.strip():
        raise LorabakeError(
            "multipart field 'config' (JSON text) is required",
            code="missing_field",
            details={"field": "config"},
            status_code=422,
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LorabakeError(
            f"config is not valid JSON: {exc}",
            code="invalid_config",
            details={"field": "config"},
            status_code=422,
        ) from exc
    if not isinstance(raw, dict):
        raise LorabakeError(
            "config must be a JSON object",
            code="invalid_config",
            details={"field": "config"},
            status_code=422,
        )
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        fields = field_errors(exc, prefix="config.")
        raise LorabakeError(
            f"invalid config: {describe_fields(fields)}",
            code="invalid_config",
            details={"fields": fields},
            status_code=422,
        ) from exc


def submit_job(state: AppState, owner: str, config: TrainingConfig, upload: ReceivedFile) -> Job:
    report = inspect_dataset_zip(upload.path, config, state.settings.zip_limits)
    plan = compute_plan(report.layout, config)

    job_id = new_id()
    dataset_key = f"jobs/{job_id}/dataset.zip"
    state.store.put_file(dataset_key, upload.path, "application/zip")
    try:
        with state.sessions() as session:
            job = Job(
                id=job_id,
                owner=owner,
                status=JobStatus.queued,
                config=config.model_dump(mode="json"),
                plan=plan.model_dump(mode="json"),
                dataset_key=dataset_key,
                dataset_filename=upload.filename,
                dataset_bytes=upload.size,
                dataset_sha256=upload.sha256,
                total_steps=plan.total_steps,
                total_epochs=plan.epochs,
                seed=config.seed,
            )
            session.add(job)
            add_event(session, job_id, "status", {"status": JobStatus.queued.value})
            session.commit()
    except BaseException:
        state.store.delete_prefix(f"jobs/{job_id}/")
        raise

    # Enqueue only after the commit, so a worker never receives an id it cannot find.
    try:
        enqueue_training(state.celery, state.settings, job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        with state.sessions() as session:
            stored = session.get(Job, job_id)
            assert stored is not None
            set_status(
                session,
                stored,
                JobStatus.failed,
                error_code="queue_unavailable",
                error_message=f"the job queue is unreachable: {exc}",
            )
            session.commit()
        raise LorabakeError(
            "the job queue is unreachable; try again shortly",
            code="queue_unavailable",
            details={"job_id": job_id},
            status_code=503,
        ) from exc
    with state.sessions() as session:
        loaded = session.get(Job, job_id)
        assert loaded is not None
        _ = loaded.artifacts  # load before the session closes
        return loaded
