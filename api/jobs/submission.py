"""Turning an upload into a queued job: check everything first, then store, then record, then enqueue.

Bad input fails in the first step, before any object or row exists, so nothing is half-stored.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api.datasets.service import owned_dataset, store_caption_snapshot
from api.errors import validate_json_model
from api.jobs.network_weights import network_weights_file, store_network_weights
from api.models.service import (
    require_known_base_model,
    require_known_captioner,
    require_known_training_captioner,
    with_catalogue_name,
)
from api.queue.service import job_queue
from api.state import AppState
from api.uploads import ReceivedFile
from api.webhooks.service import JobWebhook, job_webhook
from shared.config.captioning import CaptionConfig
from shared.config.presets import PlannedRun, plan_run
from shared.config.spec import TrainingConfig
from shared.datasets.intake import inspect_dataset_zip
from shared.datasets.layout import DatasetLayout
from shared.datasets.stored import dataset_layout, image_sizes
from shared.db.models import ApiKey, Job, JobKind, JobStatus, new_id
from shared.errors import LorabakeError, NotFoundError
from shared.jobs.estimates import predict_captioning
from shared.jobs.retention import check_dataset, set_job_retention
from shared.jobs.run_speeds import caption_history, estimate_training, queue_gpu_model
from shared.jobs.state import add_event
from shared.usage.quotas import check_quotas
from shared.vram.cards import add_vram

log = logging.getLogger("lorabake.api")


def parse_config(raw: object) -> TrainingConfig:
    """The `config` field: JSON text (multipart) or an already-decoded object (JSON body)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise LorabakeError(
            "field 'config' (a JSON object) is required",
            code="missing_field",
            details={"field": "config"},
            status_code=422,
        )
    return validate_json_model(TrainingConfig, raw, "config", "invalid_config")


def submit_job(
    state: AppState,
    owner: str,
    config: TrainingConfig,
    upload: ReceivedFile,
    webhook: JobWebhook | None = None,
    *,
    api_key_id: str | None = None,
    queue: str | None = None,
    network_weights: ReceivedFile | None = None,
) -> Job:
    config = with_catalogue_name(state, config)  # a single file named by its stem
    family = require_known_base_model(state, config)
    queue = job_queue(state, config, queue)
    report = inspect_dataset_zip(upload.path, config, state.settings.zip_limits)
    # preset (for the family), buckets by probed sizes
    run = plan_run(config, report.layout, report.image_sizes, report, family)
    require_known_training_captioner(state, config, run.config)

    job_id = new_id()
    dataset_key = f"jobs/{job_id}/dataset.zip"
    with network_weights_file(state, owner, run, family, network_weights) as (run, weights):
        try:
            store_network_weights(state, job_id, weights)
            state.store.put_file(dataset_key, upload.path, "application/zip")
        except BaseException:
            state.remove_objects(f"jobs/{job_id}/")
            raise
    job = Job(
        id=job_id,
        owner=owner,
        api_key_id=api_key_id,
        queue=queue,
        dataset_key=dataset_key,
        dataset_filename=upload.filename,
        dataset_bytes=upload.size,
        dataset_sha256=upload.sha256,
    )
    return queue_training_job(state, job, run, webhook, family=family)


def dataset_job_config(config: TrainingConfig, layout: DatasetLayout) -> TrainingConfig:
    """A flat dataset's repeats/trigger/class were fixed at upload; the job takes them from there."""
    if layout.kind != "flat":
        return config
    subset = layout.train_subsets[0]
    stored = {"repeats": subset.repeats, "trigger_word": subset.trigger, "class_word": subset.class_token}
    for name, value in stored.items():
        if name in config.model_fields_set and getattr(config, name) != value:
            raise LorabakeError(
                f"config.{name} is {getattr(config, name)!r} but the dataset was uploaded with {value!r}; "
                "leave it out (or upload the dataset again with other options)",
                code="invalid_config",
                details={"fields": [{"field": f"config.{name}", "message": "conflict"}]},
                status_code=422,
            )
    return config.model_copy(update=stored)


def submit_dataset_job(
    state: AppState,
    owner: str,
    config: TrainingConfig,
    dataset_id: str,
    webhook: JobWebhook | None = None,
    *,
    api_key_id: str | None = None,
    queue: str | None = None,
    network_weights: ReceivedFile | None = None,
) -> Job:
    """A training job on a stored dataset, pinned to its current caption revision."""
    config = with_catalogue_name(state, config)  # a single file named by its stem
    family = require_known_base_model(state, config)
    queue = job_queue(state, config, queue)
    with state.sessions() as session:
        try:
            dataset = owned_dataset(session, owner, dataset_id)
        except NotFoundError as exc:
            raise LorabakeError(
                f"no dataset {dataset_id}",
                code="unknown_dataset",
                details={"field": "dataset_id"},
                status_code=422,
            ) from exc
        check_dataset(dataset, "dataset_id")  # a 410 once retention deleted its zip
        layout = dataset_layout(dataset)
        config = dataset_job_config(config, layout)
        run = plan_run(config, layout, image_sizes(dataset), dataset.report, family)  # upright, as probed
        require_known_training_captioner(state, config, run.config)
        job_id = new_id()
        captions_key = store_caption_snapshot(state, job_id, dataset)
        job = Job(
            id=job_id,
            owner=owner,
            api_key_id=api_key_id,
            queue=queue,
            dataset_key=dataset.object_key,
            dataset_filename=dataset.name,
            dataset_bytes=dataset.bytes,
            dataset_sha256=dataset.sha256,
            dataset_id=dataset.id,
            caption_revision=dataset.caption_revision,
            captions_key=captions_key,
        )
    try:
        with network_weights_file(state, owner, run, family, network_weights) as (run, weights):
            store_network_weights(state, job_id, weights)
    except BaseException:
        state.remove_objects(f"jobs/{job_id}/")  # the caption snapshot
        raise
    return queue_training_job(state, job, run, webhook, family=family)


def submit_caption_job(
    state: AppState,
    owner: str,
    dataset_id: str,
    config: CaptionConfig,
    webhook: JobWebhook | None = None,
    *,
    api_key_id: str | None = None,
    chosen_by: str | None = None,
) -> Job:
    """A captioning run over a stored dataset, queued like a training job (it needs the GPU too), with its
    own `webhook` as a training job has it. It counts towards its key's `max_running`. `chosen_by`: what
    chose the method (`method 'auto'`), for the refusal of a captioner no worker has."""
    with state.sessions() as session:
        dataset = owned_dataset(session, owner, dataset_id)  # an unknown dataset is a 404 first
        require_known_captioner(state, config, "", chosen_by)
        check_dataset(dataset)
        images = sum(1 for image in dataset.images if not image.is_reg)
        job = Job(
            id=new_id(),
            owner=owner,
            api_key_id=api_key_id,
            kind=JobKind.caption,
            dataset_key=dataset.object_key,
            dataset_filename=dataset.name,
            dataset_bytes=dataset.bytes,
            dataset_sha256=dataset.sha256,
            dataset_id=dataset.id,
        )
        card = queue_gpu_model(session, state.settings, state.settings.queue_name)
        estimate = predict_captioning(config.method, images, caption_history(session, config.method), card)
    job.estimated_seconds = estimate["seconds"]
    plan = {"images": images, "estimate": estimate}
    return queue_job(state, job, config.model_dump(mode="json"), plan, images, 0, None, webhook)


def queue_training_job(
    state: AppState,
    job: Job,
    run: PlannedRun,
    webhook: JobWebhook | None = None,
    *,
    family: str | None = None,
) -> Job:
    """A training job as planned (the config after its preset, the plan) recorded and handed on, with the
    run time it is expected to take (`plan.estimate`, shared/jobs/run_speeds.py) for the family it trains."""
    config, plan = run.config, run.plan
    config_json, plan_json = config.model_dump(mode="json"), run.plan_json()
    with state.sessions() as session:
        card = queue_gpu_model(session, state.settings, job.queue or state.settings.queue_name)
        plan_json["estimate"] = estimate_training(session, config_json, plan_json, family, card)
        add_vram(session, state.settings, config, plan_json, family, job.queue or state.settings.queue_name)
    job.estimated_seconds = plan_json["estimate"]["seconds"]
    return queue_job(
        state,
        job,
        config_json,
        plan_json,
        plan.total_steps,
        plan.epochs,
        config.seed,
        webhook,
    )


def check_predicted_gpu_time(session: Session, job: Job) -> None:
    """The submitting key's `gpu_seconds_per_month` against what this month used plus the job's predicted
    run time (the other quotas were checked before anything was read)."""
    key = session.get(ApiKey, job.api_key_id) if job.api_key_id else None
    limits = {k: v for k, v in (key.limits if key else {}).items() if k == "gpu_seconds_per_month"}
    if limits and job.estimated_seconds:
        check_quotas(session, job.owner, limits, adding_gpu_seconds=job.estimated_seconds)


def queue_job(
    state: AppState,
    job: Job,
    config: dict,
    plan: dict,
    total_steps: int,
    total_epochs: int,
    seed: int | None,
    webhook: JobWebhook | None = None,
) -> Job:
    """Records a job whose objects are stored, then runs a pass of the scheduler, which sends it to the broker
    when a worker has room and it is next in line (shared/jobs/scheduler.py). The row is committed first, so
    a broker that is down costs nothing but time. A failed commit removes what was stored, so a refusal
    leaves nothing behind."""
    job_id = job.id
    job.status, job.config, job.plan = JobStatus.queued, config, plan
    job.total_steps, job.total_epochs, job.seed = total_steps, total_epochs, seed
    job.enqueued_at = None  # waiting for the scheduler
    job.artifacts = []
    try:
        with state.sessions() as session:
            set_job_retention(session, job, config, state.settings.retention_days)  # 422: past the key max
            check_predicted_gpu_time(session, job)  # 429: its expected run would pass the monthly quota
            session.add(job)
            if webhook is not None:  # in the same transaction: its first event is this queued one
                session.flush()
                job_webhook(session, state.settings, job.owner, job_id, webhook.url, webhook.events)
            add_event(session, job_id, "status", {"status": JobStatus.queued.value})
            session.commit()
    except BaseException:
        state.remove_objects(f"jobs/{job_id}/")
        raise
    state.job_views.standing.forget(job.queue)  # its place is counted at its first poll
    # After the commit, so a worker never receives an id it cannot find. The job is stored whatever happens
    # here: the scheduler's periodic passes send it if this one cannot.
    try:
        state.scheduler.run_once()
    except Exception:
        log.exception("job %s: the scheduler pass after its submission failed", job_id)
    return job
