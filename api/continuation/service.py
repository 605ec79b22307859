"""POST /v1/jobs/{id}/continue: a new job that trains a succeeded job on from its final resume state.

A new job rather than the same one reopened: it has its own id, events, webhook, usage and files, and the
source's files stay as they were. It takes the source's config (after its preset) with `epochs` the new
total, its dataset objects and caption snapshot (the same revision) and its seed; its plan is the source's
with the new total. Epochs are numbered on, so its files are those of a run of the new total from the start
(docs/API.md, "Continue a job", says what that needs of the lr schedule).
"""

from __future__ import annotations

from api.continuation.schemas import ContinueRequest
from api.jobs.submission import queue_job
from api.state import AppState
from api.webhooks.service import JobWebhook
from shared.config.spec import TrainingConfig
from shared.db.keys import Identity
from shared.db.models import Job, JobKind, JobStatus, is_object_id, new_id
from shared.errors import ConflictError, LorabakeError, NotFoundError
from shared.jobs.continuation import continued_plan, final_state_record
from shared.jobs.run_speeds import estimate_training, planned_family, queue_gpu_model

MAX_EPOCHS = TrainingConfig.model_fields["epochs"].metadata[-1].le  # the config's own bound


class JobExpired(LorabakeError):
    status_code = 410
    code = "job_expired"


def continued_estimate(state: AppState, source: Job, config: dict, plan: dict) -> dict:
    """The run time of the epochs it adds (the steps past the source's), as POST /v1/plan predicts it."""
    remaining = {**plan, "total_steps": max(plan["total_steps"] - source.total_steps, 0)}
    with state.sessions() as session:
        card = queue_gpu_model(session, state.settings, source.queue or state.settings.queue_name)
        return estimate_training(session, config, remaining, planned_family(source), card)


def continue_job(
    state: AppState, caller: Identity, job_id: str, body: ContinueRequest, webhook: JobWebhook | None
) -> Job:
    with state.sessions() as session:
        source = session.get(Job, job_id) if is_object_id(job_id) else None
        if source is None or source.owner != caller.owner:
            raise NotFoundError(f"no job {job_id}", details={"job_id": job_id})
        session.expunge(source)
    if source.kind != JobKind.train:
        raise ConflictError(f"job {job_id} is a {source.kind} job; only training jobs continue",
                            code="job_not_continuable", details={"job_id": job_id})  # fmt: skip
    if source.status != JobStatus.succeeded:
        raise ConflictError(
            f"job {job_id} is {source.status}; only a succeeded job can be continued",
            code="job_not_succeeded",
            details={"job_id": job_id, "status": source.status},
        )
    if source.expired_at is not None:
        raise JobExpired(f"job {job_id} expired: its files and resume state were deleted",
                         details={"job_id": job_id})  # fmt: skip
    config = TrainingConfig.model_validate(source.config)
    total = config.epochs + body.epochs
    if total > MAX_EPOCHS:
        raise LorabakeError(
            f"job {job_id} trained {config.epochs} epochs; {body.epochs} more is past {MAX_EPOCHS} in all",
            code="invalid_field",
            details={"field": "epochs"},
            status_code=422,
        )
    if final_state_record(state.store, source.id, config.epochs) is None:
        raise ConflictError(
            f"job {job_id} kept no final resume state (it was deleted, or the job ended before they were "
            "kept): it cannot be continued; start a new job with network_weights from its last epoch instead",
            code="resume_state_gone",
            details={"job_id": job_id},
        )
    if state.store.object_size(source.dataset_key) is None:
        raise ConflictError(f"job {job_id}'s dataset is gone from storage: it cannot be continued",
                            code="dataset_gone", details={"job_id": job_id})  # fmt: skip
    job = Job(
        id=new_id(),
        owner=caller.owner,
        api_key_id=caller.key_id,
        queue=source.queue,
        kind=JobKind.train,
        dataset_key=source.dataset_key,
        dataset_filename=source.dataset_filename,
        dataset_bytes=source.dataset_bytes,
        dataset_sha256=source.dataset_sha256,
        dataset_id=source.dataset_id,
        caption_revision=source.caption_revision,
        captions_key=source.captions_key,
        continued_from=source.id,
    )
    plan = continued_plan(source.plan, total, config.save_every_n_epochs)
    plan["estimate"] = continued_estimate(state, source, {**source.config, "epochs": total}, plan)
    job.estimated_seconds = plan["estimate"]["seconds"]
    return queue_job(
        state, job, {**source.config, "epochs": total}, plan, plan["total_steps"], total, source.seed, webhook
    )
