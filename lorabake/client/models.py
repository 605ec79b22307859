"""Response bodies as typed models. Every model keeps fields it does not know (`extra="allow"`) and most
fields have defaults, so a newer server that adds fields, or an older one that lacks some, still parses.
Statuses and kinds stay plain strings for the same reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def _as_utc(value: datetime) -> datetime:
    # The server's times are UTC; read back from SQLite (the embedded mode) they come without an offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- jobs ------------------------------------------------------------------------------------------------


class Progress(_Model):
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    percent: float | None = None


class ErrorInfo(_Model):
    code: str
    message: str = ""
    details: dict[str, Any] = {}


class Artifact(_Model):
    id: str
    kind: str  # lora, sample, captions...
    name: str
    epoch: int | None = None
    step: int | None = None
    is_final: bool = False
    size_bytes: int
    sha256: str
    created_at: UtcDatetime | None = None
    download_url: str = ""  # the API path; it redirects to storage or streams the file
    meta: dict[str, Any] | None = None
    expired_at: UtcDatetime | None = None  # retention deleted the file: downloading it answers 410


class Job(_Model):
    id: str
    kind: str = "train"
    status: str
    dataset_id: str | None = None
    caption_revision: int | None = None
    config: dict[str, Any] = {}
    plan: dict[str, Any] = {}
    progress: Progress = Progress()
    seed: int | None = None
    dataset: dict[str, Any] = {}
    artifacts: list[Artifact] = []
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    # retention: days its files are kept after it finishes (0: forever), when they will be (or were) deleted,
    # and when they were (the job's record stays)
    retention_days: int | None = None
    expires_at: UtcDatetime | None = None
    expired_at: UtcDatetime | None = None
    # while queued, in get_job() only (null in listings and once started): its place in line (1: next to
    # start) and a rough estimate of the seconds until it starts (null when the server cannot tell)
    queue_position: int | None = None
    estimated_start_seconds: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class Event(_Model):
    """One server-sent event of a job: `status`, `stage`, `progress`, `artifact`, `artifact_removed`,
    `cancel_requested` (and whatever a newer server adds). `id` is what Last-Event-ID resumes from."""

    id: int | None = None
    type: str
    data: dict[str, Any] = {}

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    def progress(self) -> Progress:
        return Progress.model_validate(self.data)


class QueueCounts(_Model):
    queued: int = 0  # waiting to start
    running: int = 0  # preparing, training, rendering or uploading


class NamedQueue(_Model):
    """One queue the deployment knows (a GPU class, say), with the live workers that take jobs from it."""

    name: str
    queued: int = 0
    running: int = 0
    in_broker: int | None = None
    workers: int = 0


class Queue(_Model):
    """`GET /v1/queue`: everyone's jobs as counts (every queue's), the caller's own apart (`yours`), and
    each named queue apart (`queues`, on servers that have them)."""

    name: str = ""  # the default queue
    queued: int = 0
    running: int = 0
    in_broker: int | None = None  # messages waiting in the default queue; None when it cannot be read
    workers_alive: int = 0
    yours: QueueCounts = QueueCounts()
    queues: list[NamedQueue] = []


# --- usage ----------------------------------------------------------------------------------------------


class UsageCounts(_Model):
    gpu_seconds: float = 0.0
    steps_trained: int = 0
    images_captioned: int = 0


class UsagePeriod(UsageCounts):
    period: str  # the day, or the month's first day (UTC, ISO)
    by_kind: list[dict[str, Any]] = []  # {"kind", "gpu", "gpu_seconds", "steps_trained", "images_captioned"}


class Usage(_Model):
    """`GET /v1/usage`: the owner's usage per day or month, the storage it holds now (`storage`, bytes by
    part and `total_bytes`), and the asking key's quotas with their use."""

    owner: str
    group: str
    since: str
    until: str
    totals: UsageCounts
    periods: list[UsagePeriod] = []
    storage: dict[str, int] = {}
    quotas: list[dict[str, Any]] = []  # {"quota", "limit", "used", "resets_at"}


# --- datasets --------------------------------------------------------------------------------------------


class DatasetImage(_Model):
    id: str
    path: str
    subset: str = ""
    is_reg: bool = False
    width: int = 0
    height: int = 0
    format: str = ""
    caption: str | None = None
    caption_source: str = ""
    thumbnail_url: str = ""


class DatasetSummary(_Model):
    id: str
    name: str = ""
    bytes: int = 0
    sha256: str = ""
    images: int = 0
    reg_images: int = 0
    subsets: list[dict[str, Any]] = []
    caption_revision: int = 0
    warnings: list[dict[str, Any]] = []
    created_at: UtcDatetime | None = None


class Dataset(DatasetSummary):
    files: list[dict[str, Any]] = []  # the intake report: accepted, converted (how) or rejected (why)
    image_list: list[DatasetImage] = []


class DatasetPage(_Model):
    items: list[DatasetSummary]
    next_cursor: str | None = None


class Caption(_Model):
    image_id: str
    path: str = ""
    caption: str | None = None


class Captions(_Model):
    dataset_id: str
    revision: int
    captions: list[Caption] = []
    # what made the revision (`upload`, `edit`, or the caption method) and, for a caption job's, its
    # captioner: `method`, `model` and every option (`options`)
    source: str | None = None
    captioner: dict[str, Any] | None = None

    def by_path(self) -> dict[str, str | None]:
        return {c.path: c.caption for c in self.captions}


class CaptionEditResult(_Model):
    revision: int
    changed: int


class TagCount(_Model):
    tag: str
    count: int


class Upload(_Model):
    """`POST /v1/uploads`: where to send a dataset zip straight to storage, for `upload_id`."""

    upload_id: str
    method: str = "PUT"
    url: str  # a presigned storage URL (S3), or this API's own /storage/uploads/... (embedded mode)
    headers: dict[str, str] = {}  # to send as given (an S3 signature covers the Content-Type)
    max_bytes: int | None = None
    url_expires_at: UtcDatetime | None = None
    expires_at: UtcDatetime | None = None  # use it by then


# --- webhooks --------------------------------------------------------------------------------------------


class Webhook(_Model):
    """A registered endpoint (`kind` "endpoint": every event of yours that `events` names, all when empty)
    or one job's own `webhook` (`kind` "job")."""

    id: str
    kind: str = "endpoint"
    job_id: str | None = None
    url: str
    events: list[str] = []
    description: str = ""
    created_at: UtcDatetime | None = None


class CreatedWebhook(Webhook):
    secret: str  # the `whsec_` secret that signs its deliveries


class WebhookSecret(_Model):
    secret: str
    previous_secret_valid_until: UtcDatetime | None = None  # after a rotation the old one signs until then


class WebhookAttempt(_Model):
    at: UtcDatetime | None = None
    status_code: int | None = None  # the receiver's answer; None when there was none
    latency_ms: float | None = None
    error: str | None = None


class WebhookDelivery(_Model):
    id: str  # the `webhook-id` header of every attempt
    event_type: str
    job_id: str | None = None
    status: str  # pending, delivered, failed
    attempts: list[WebhookAttempt] = []
    next_attempt_at: UtcDatetime | None = None
    created_at: UtcDatetime | None = None
    delivered_at: UtcDatetime | None = None
    payload: dict[str, Any] = {}


class DeliveryPage(_Model):
    items: list[WebhookDelivery]
    next_cursor: str | None = None


# --- base models, API keys ------------------------------------------------------------------------------


class BaseModelInfo(_Model):
    """A base model the workers reported (`config.base_model` takes its `name`)."""

    name: str
    family: str | None = None  # sd1, sd2, sdxl, flux1; None for a .ckpt (read when a job loads it)
    prediction_type: str | None = None
    kind: str = ""  # diffusers, single_file
    source: str = ""  # local, hub_cache
    size_bytes: int = 0
    last_seen_at: UtcDatetime | None = None
    workers_online: int = 0


class CaptionerInfo(_Model):
    """A captioner model the workers reported (a caption config's `<method>_model` takes its `name`)."""

    name: str
    method: str = ""  # blip, wd14, florence2, qwen_vl, joycaption
    source: str = ""  # local, hub_cache
    size_bytes: int = 0
    last_seen_at: UtcDatetime | None = None
    workers_online: int = 0


class ModelCatalogue(_Model):
    items: list[BaseModelInfo]
    captioners: list[CaptionerInfo] = []  # apart from the base models
    downloads_allowed: bool = False  # whether a hub repo id not listed is accepted (workers download it)


class KeyLimits(_Model):
    max_running: int | None = None
    priority: int | None = None
    max_queued: int | None = None
    submissions_per_minute: float | None = None
    max_retention_days: int | None = None
    gpu_seconds_per_month: float | None = None  # quota on the owner's GPU seconds in a calendar month
    storage_bytes: int | None = None  # quota on the bytes the owner holds in storage


class ApiKeyInfo(_Model):
    id: str
    owner: str
    name: str = ""
    prefix: str = ""  # the key's first characters, to recognize it by
    admin: bool = False
    scopes: list[str] = []
    limits: KeyLimits = KeyLimits()
    created_at: UtcDatetime | None = None
    last_used_at: UtcDatetime | None = None
    revoked_at: UtcDatetime | None = None


class CreatedKey(ApiKeyInfo):
    key: str  # the key itself: the server shows it this once


class KeyPage(_Model):
    items: list[ApiKeyInfo]
    next_cursor: str | None = None


# --- plan, presets, configs, health ------------------------------------------------------------------------


class Checkpoint(_Model):
    file: str
    kind: str
    epoch: int
    step: int
    kept: bool = True


class Plan(_Model):
    source: str = ""
    layout: str = ""
    family: str | None = None  # sd1, sd2, sdxl, flux1: what the job trains for; None when not known yet
    size_multiple: int = 8  # resolution / bucket_reso_steps must be multiples of it (16 for flux1)
    config: dict[str, Any] = {}
    plan: dict[str, Any] = {}
    checkpoints: list[Checkpoint] = []
    checkpoint_count: int = 0
    warnings: list[dict[str, Any]] = []


class PresetValues(_Model):
    values: dict[str, Any] = {}
    computed: dict[str, str] = {}


class Preset(_Model):
    name: str
    description: str = ""
    values: dict[str, Any] = {}
    computed: dict[str, str] = {}
    families: dict[str, PresetValues] = {}  # what it sets instead on a base of these families (flux1)


class KohyaImport(_Model):
    config: dict[str, Any]
    mapped: list[dict[str, Any]] = []
    ignored: list[dict[str, Any]] = []
    unsupported: list[dict[str, Any]] = []
    notes: list[str] = []


class Readiness(_Model):
    status: str
    checks: dict[str, str] = {}
    workers_alive: int | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"
