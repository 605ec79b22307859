"""ORM models: the database row is the source of truth for a job."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC), Postgres aware ones: compare them as aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def new_id() -> str:
    return uuid.uuid4().hex


_ID = re.compile(r"[0-9a-f]{32}")


def is_object_id(value: str) -> bool:
    """Whether `value` can be one of our ids; anything else names nothing (and never reaches the database)."""
    return _ID.fullmatch(value) is not None


class JobStatus(StrEnum):
    queued = "queued"
    preparing = "preparing"  # fetching, extracting and checking the dataset, loading the model
    training = "training"
    rendering = "rendering"  # a generation or comparison drawing its images (not training anything)
    uploading = "uploading"  # last files going to storage
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings so a key can be recognized
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # what the key may do with its owner's resources (shared.db.keys.SCOPES); an admin key may do all
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per-key limits (api/jobs/limits.py)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class JobKind(StrEnum):
    train = "train"
    caption = "caption"  # captions a stored dataset (BLIP or WD14) on the GPU queue
    generate = "generate"  # one preview image from a base model and LoRAs (POST /v1/generations)
    compare = "compare"  # a training job's epochs x LoRA weights as images and grids (POST .../comparisons)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)  # who submitted it
    queue: Mapped[str | None] = mapped_column(String(100), default=None)  # a named queue; None: the default
    kind: Mapped[str] = mapped_column(String(20), default=JobKind.train, server_default=JobKind.train)
    # Jobs made from a stored dataset remember which one, and the caption revision they used.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True, default=None
    )
    caption_revision: Mapped[int | None] = mapped_column(Integer, default=None)
    captions_key: Mapped[str | None] = mapped_column(String(500), default=None)  # snapshot object
    status: Mapped[str] = mapped_column(String(20), index=True, default=JobStatus.queued)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_key: Mapped[str] = mapped_column(String(500))
    dataset_filename: Mapped[str] = mapped_column(String(500), default="")
    dataset_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    dataset_sha256: Mapped[str] = mapped_column(String(64), default="")
    # the size of the resume state kept in storage for it (0: none): what storage usage counts for it
    resume_state_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    total_epochs: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    steps_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    # when eta_seconds was written: the queue's estimates count down from it (updated_at also moves with
    # every lease renewal, so it cannot date an ETA)
    eta_at: Mapped[datetime | None] = mapped_column(default=None)
    # the predicted run time at submission (shared/jobs/estimates.py): queued jobs ahead count with it
    estimated_seconds: Mapped[float | None] = mapped_column(Float, default=None)

    seed: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    # of those, runs its worker handed back (an outage, a shutdown): they do not count towards max_attempts
    handed_back: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    # The lease of the worker running the job (shared.jobs.leases): every write it makes names this token,
    # so a worker presumed dead (its lease ran out and the job moved on) can write nothing more.
    lease_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # The outbox: when the job was last handed to the broker; NULL when that failed (the reconciler sends it).
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(100), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # retention swept its dataset copy, files, samples and resume state (the row and metadata stay)
    expired_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # days its objects are kept after it finished, fixed at submission (0: forever; None: a job from before
    # retention, which follows the deployment's current default) and the date that makes (shared/retention.py)
    retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # POST /v1/jobs/{id}/continue: the succeeded job this one trains on from (its final resume state)
    continued_from: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True, default=None
    )

    @property
    def lost_runs(self) -> int:
        """Runs not handed back. Counted where no run of the job is live (a claim, or the reconciler taking
        an expired lease), these are the runs whose worker stopped without a word (killed, out of memory,
        its host lost)."""
        return self.attempts - self.handed_back

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.created_at", cascade="all, delete-orphan"
    )


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # "lora", later "sample", "state"
    name: Mapped[str] = mapped_column(String(300))  # the file name a user saves it as
    epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    object_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # e.g. a sample's prompt
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)  # its object was deleted by retention

    job: Mapped[Job] = relationship(back_populates="artifacts")


class WorkerProcess(Base):
    """A worker that is alive, as its own heartbeat says (what the queue's consumers are)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid
    hostname: Mapped[str] = mapped_column(String(200))
    queues: Mapped[str] = mapped_column(String(500), default="")
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # jobs it runs at once
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # shared/gpu_inventory.py
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class BaseModelRecord(Base):
    """A base model a worker has reported (what `base_model` can name; GET /v1/models). Kept after its
    workers are gone, so a restart of every worker does not make the deployment forget what it trains on.
    A captioner model is reported the same way (kind `captioner`: what a caption config's `*_model` names)."""

    __tablename__ = "base_models"

    name: Mapped[str] = mapped_column(String(500), primary_key=True)  # what `base_model` takes
    family: Mapped[str | None] = mapped_column(String(10), default=None)  # sd1 / sd2 / sdxl; None: unread
    prediction_type: Mapped[str | None] = mapped_column(String(20), default=None)
    kind: Mapped[str] = mapped_column(String(20))  # diffusers / single_file / captioner
    captioner: Mapped[str | None] = mapped_column(String(20), default=None)  # its method: blip, florence2...
    source: Mapped[str] = mapped_column(String(20))  # local / hub_cache
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WorkerModel(Base):
    """Which worker has which base model, as of its last report."""

    __tablename__ = "worker_models"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(500), primary_key=True, index=True)


class ModelReport(Base):
    """When each worker last reported its base models (with none, no other row would say it did), so a
    refusal can tell what is true: "the last report came 3 s ago and listed none"."""

    __tablename__ = "model_reports"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunSpeed(Base):
    """What a finished run measured, with what its speed depends on: the history estimates predict from
    (shared/jobs/estimates.py). Kept when its job is deleted: the speed of a card does not belong to a job."""

    __tablename__ = "run_speeds"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # train / caption
    family: Mapped[str | None] = mapped_column(String(10), default=None)
    gpu_model: Mapped[str] = mapped_column(String(200))
    method: Mapped[str | None] = mapped_column(String(20), default=None)  # a caption job's captioner
    features: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # estimates.RunFeatures' fields
    steps_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    overhead_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float)  # wall time, start to end
    finished_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ServiceLock(Base):
    """A named lock with an expiry, so that one process at a time runs a periodic duty (the reconciler)
    on Postgres and SQLite alike."""

    __tablename__ = "service_locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """Append-only history of a job (status changes, saved files, throttled progress) for event streams."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when the webhook fan-out turned this event into deliveries (None: not yet; shared/webhooks/fanout.py)
    webhooks_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Dataset(Base):
    """An uploaded dataset, kept so it can be captioned, reviewed and trained on more than once."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(500), default="")
    object_key: Mapped[str] = mapped_column(String(500))  # the zip as uploaded
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    layout: Mapped[dict[str, Any]] = mapped_column(JSON)  # kind + subsets (shared.datasets.layout)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # per-file outcome and warnings
    caption_revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)  # retention deleted its objects

    images: Mapped[list[DatasetImage]] = relationship(
        back_populates="dataset", order_by="DatasetImage.path", cascade="all, delete-orphan"
    )


class DatasetImage(Base):
    __tablename__ = "dataset_images"
    __table_args__ = (UniqueConstraint("dataset_id", "path", name="uq_dataset_images_path"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1000))  # inside the zip
    subset: Mapped[str] = mapped_column(String(1000))  # the subset folder it belongs to
    is_reg: Mapped[bool] = mapped_column(Boolean, default=False)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(20))
    content_sha256: Mapped[str] = mapped_column(String(64))
    caption: Mapped[str | None] = mapped_column(Text, default=None)  # None: the folder's `trigger class`
    caption_source: Mapped[str] = mapped_column(String(20), default="none")  # file, blip, wd14, edit
    thumbnail_key: Mapped[str | None] = mapped_column(String(500), default=None)

    dataset: Mapped[Dataset] = relationship(back_populates="images")


class Upload(Base):
    """A dataset zip a client puts straight into storage (POST /v1/uploads) for one dataset or job to take
    (shared/datasets/direct_uploads.py). Kept after use until `expires_at`, so a second use is told so."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(String(500), default="dataset.zip")
    # the local store's PUT URL carries a secret token, kept hashed; S3 signs its own URLs (None)
    token_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    url_expires_at: Mapped[datetime] = mapped_column()  # the PUT URL's end
    expires_at: Mapped[datetime] = mapped_column(index=True)  # then it is deleted, used or not
    used_at: Mapped[datetime | None] = mapped_column(default=None)  # when a dataset or job took it


class CaptionRevision(Base):
    """One change to a dataset's captions: what each changed caption was and became."""

    __tablename__ = "caption_revisions"
    __table_args__ = (UniqueConstraint("dataset_id", "revision", name="uq_caption_revisions_revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(20))  # upload, edit, blip, wd14
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"images": [{"id", "before", "after"}]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """Where an owner's events go: a registered endpoint (every event of the owner, `events` filtering), or
    a job's own `webhook` (kind "job": that job's events only, signed with the owner's default secret)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(10), default="endpoint")  # endpoint / job
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    events: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every event
    secret: Mapped[str | None] = mapped_column(String(100), default=None)  # None: the owner's default
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_until: Mapped[datetime | None] = mapped_column(default=None)  # old one also signs
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookOwnerSecret(Base):
    """The secret that signs an owner's per-job webhooks (GET /v1/webhooks/default-secret)."""

    __tablename__ = "webhook_owner_secrets"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint, sent until a 2xx or until the retry schedule ends. Its id is the
    `webhook-id` of every attempt, so receivers can drop repeats."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_<hex>
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(200), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    event_id: Mapped[int] = mapped_column(Integer, index=True)  # the job event: orders a job's deliveries
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)  # pending/delivered/failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        back_populates="delivery", cascade="all, delete-orphan", order_by="WebhookAttempt.id"
    )


class WebhookAttempt(Base):
    """One try of a delivery: when, the answer's status (None: no answer), how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(String(500), default=None)

    delivery: Mapped[WebhookDelivery] = relationship(back_populates="attempt_log")


class IdempotencyKey(Base):
    """A creating POST's `Idempotency-Key`, per owner: claimed while its request runs, then the answer that
    a repeat gets until `expires_at` (shared/idempotency.py, api/idempotency.py). The key is kept hashed."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))  # the claim's: only its own request finishes or drops it
    state: Mapped[str] = mapped_column(String(12), default="in_progress")  # in_progress / done
    fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)  # method, path, body
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[Any] = mapped_column(JSON(none_as_null=True), default=None, nullable=True)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # in progress: renewed while the request runs (a stopped process lets go soon); done: the replay window
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UsageRecord(Base):
    """The usage ledger: what an owner's jobs used, per UTC day, job kind and GPU model, added by the workers
    as the work happens (shared/usage/ledger.py). Rows are only ever added to, never estimated."""

    __tablename__ = "usage"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)  # the job's kind (JobKind)
    gpu: Mapped[str] = mapped_column(String(200), primary_key=True)  # the device's name, or "cpu"
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    steps_trained: Mapped[int] = mapped_column(BigInteger, default=0)
    images_captioned: Mapped[int] = mapped_column(BigInteger, default=0)


class JobUsage(Base):
    """How much of one job's work the ledger already holds, as absolute counts, so that a write repeated
    (a retried commit) or a run resumed adds only what is new: GPU seconds per run (its lease token), steps
    and images per job (a resumed run trains again from its last resume state; those steps count once)."""

    __tablename__ = "job_usage"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    run_token: Mapped[str | None] = mapped_column(String(32), default=None)  # the run gpu_seconds is of
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # counted for that run
    steps_trained: Mapped[int] = mapped_column(Integer, default=0)  # counted for the job, all runs
    images_captioned: Mapped[int] = mapped_column(Integer, default=0)
