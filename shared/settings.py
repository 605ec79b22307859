"""All configuration, from `LORABAKE_*` environment variables (pydantic-settings).

Defaults give the embedded mode: everything under one data folder (SQLite, a local object store, a
filesystem Celery broker), so `lorabake serve` needs no server. Production sets the URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.datasets.zipsafe import ZipLimits


@dataclass(frozen=True)
class EngineOptions:
    """How a process connects to the database: pool bounds and timeouts (see shared.db.session)."""

    pool_size: int = 8
    max_overflow: int = 24
    pool_timeout: float = 10.0
    connect_timeout: int = 3
    statement_timeout_ms: int = 60_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORABAKE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""  # default: sqlite file in data_dir
    broker_url: str = ""  # default: kombu's filesystem transport in data_dir/broker
    queue_name: str = "lorabake.train"
    # named queues by model family, e.g. {"sdxl": "sdxl-24gb"} (JSON in LORABAKE_QUEUE_ROUTES); other
    # families, and jobs that name no queue, go to queue_name
    queue_routes: dict[str, str] = Field(default_factory=dict)

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None  # local backend; default data_dir/objects
    s3_bucket: str = "lorabake"
    s3_endpoint_url: str | None = None  # how workers/API reach S3 (e.g. http://minio:9000)
    s3_public_endpoint_url: str | None = None  # how browsers reach it, for presigned URLs
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    presign_expiry_seconds: int = 3600

    models_dir: Path | None = None  # base models; default data_dir/models
    work_dir: Path | None = None  # worker scratch space; default data_dir/work
    allow_model_downloads: bool = False  # hub ids load from the local HF cache unless this is set
    model_scan_seconds: float = 60.0  # how often a worker looks again at what base models it has
    model_catalogue_days: float = 7.0  # a model no worker reported for this long is no longer offered
    # webhook receivers and dataset URLs may name private, loopback, link-local hosts (shared/net/public_http)
    allow_private_urls: bool = False
    # Webhooks (shared/webhooks): seconds between attempts after the first; the default spans ~27 h
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    webhook_timeout_seconds: float = 10.0  # connect and answer, per attempt
    webhook_concurrency: int = 8  # attempts in flight at once, per dispatching process
    webhook_progress_seconds: float = 10.0  # at most one job.progress event per job and endpoint per this

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    max_upload_bytes: int = 2 * 1024**3
    # POST /v1/uploads: how long after its PUT URL expires (presign_expiry_seconds) an upload may still be
    # used (a PUT begun just before may still be arriving); then the reconciler deletes it
    upload_grace_seconds: float = 3600.0
    # POST /v1/uploads: uploads one owner may hold unused and unexpired at once (past it a 429); 0: no cap
    max_pending_uploads: int = Field(20, ge=0)
    # Idempotency-Key (api/idempotency.py): how long a creating POST's answer is kept and replayed
    idempotency_hours: float = Field(24.0, gt=0)
    # dataset_url: connect and each read may take dataset_url_timeout_seconds, the whole download
    # dataset_url_max_seconds (it runs in the API request, holding one of api_threads)
    dataset_url_timeout_seconds: float = 10.0
    dataset_url_max_seconds: float = 600.0
    zip_max_entries: int = 10_000
    zip_max_total_uncompressed: int = 8 * 1024**3
    zip_max_entry_uncompressed: int = 512 * 1024**2
    zip_max_compression_ratio: float = 100.0
    max_image_pixels: int = 64_000_000

    progress_interval_seconds: float = 1.0
    task_soft_time_limit: int = 12 * 3600
    task_time_limit: int = 12 * 3600 + 300
    max_attempts: int = 3

    # Leases: a worker holds its job for lease_seconds and renews it every lease_renew_seconds from a
    # thread beside training; a lease that runs out puts the job back in the queue (the reconciler).
    lease_seconds: float = 60.0
    lease_renew_seconds: float = 15.0
    # The reconciler's pass (0 turns it off in this process): expired leases, jobs lost by the broker.
    reconcile_interval_seconds: float = 15.0
    # The scheduler's pass (0 turns it off in this process; it still runs after each submission): queued
    # jobs are sent to the broker as live workers have free slots (shared/jobs/scheduler.py).
    schedule_interval_seconds: float = 1.0
    # A queued job missing from the broker this long after it was sent is sent again.
    requeue_after_seconds: float = 30.0
    # How long a worker retries the database or storage before it hands its job back to the queue.
    outage_retry_seconds: float = 300.0
    # Retention (shared/retention.py): days a finished job's files, samples, dataset copy and resume state are
    # kept (a job's `retention_days` may ask otherwise, within its key's `max_retention_days`), and an unused
    # stored dataset's; 0 keeps them forever. The sweeper's pass runs every retention_sweep_seconds (0 turns
    # it off in this process), in each API and worker process; a lock in the database lets one act at a time.
    retention_days: int = Field(0, ge=0, le=36_500)
    retention_sweep_seconds: float = 600.0

    # Connections: every call has a bound, so an outage is an error (503) and never a hang.
    db_pool_size: int = 8
    db_max_overflow: int = 24
    db_pool_timeout_seconds: float = 10.0
    db_connect_timeout_seconds: int = 3
    db_statement_timeout_seconds: float = 60.0
    broker_timeout_seconds: float = 3.0
    s3_connect_timeout_seconds: float = 3.0
    s3_read_timeout_seconds: float = 10.0
    api_threads: int = 32  # requests served at once in threads; keep <= db_pool_size + db_max_overflow
    auth_cache_seconds: float = 5.0  # a revoked key stops working within this long
    access_log: Literal["all", "errors", "off"] = (
        "errors"  # which requests get a log line (api/request_log.py)
    )
    # our own log lines at this level; other libraries' (Celery, transformers...) only their errors, all of
    # their lines at "debug" (lorabake/logs.py); `--log-level` of api, worker and serve sets it too
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Metrics (docs/operations.md, "Metrics"): when a token is set, scrapers must send it as a Bearer token
    # (API and worker port alike); a worker serves its own metrics on worker_metrics_port, 0 turns that off.
    metrics_token: str | None = None
    worker_metrics_port: int = 0
    worker_metrics_host: str = "0.0.0.0"

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _split_origins(cls, values: dict) -> dict:
        raw = values.get("cors_origins")
        if isinstance(raw, str):
            values["cors_origins"] = [o.strip() for o in raw.split(",") if o.strip()]
        return values

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'lorabake.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        self.storage_dir = (self.storage_dir or self.data_dir / "objects").expanduser().resolve()
        self.models_dir = (self.models_dir or self.data_dir / "models").expanduser().resolve()
        self.work_dir = (self.work_dir or self.data_dir / "work").expanduser().resolve()
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError("LORABAKE_TASK_TIME_LIMIT must exceed LORABAKE_TASK_SOFT_TIME_LIMIT")
        if not 0 < self.lease_renew_seconds < self.lease_seconds:
            raise ValueError("LORABAKE_LEASE_RENEW_SECONDS must be above 0 and below LORABAKE_LEASE_SECONDS")
        return self

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            pool_size=self.db_pool_size,
            max_overflow=self.db_max_overflow,
            pool_timeout=self.db_pool_timeout_seconds,
            connect_timeout=self.db_connect_timeout_seconds,
            statement_timeout_ms=int(self.db_statement_timeout_seconds * 1000),
        )

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(
            max_entries=self.zip_max_entries,
            max_total_uncompressed=self.zip_max_total_uncompressed,
            max_entry_uncompressed=self.zip_max_entry_uncompressed,
            max_compression_ratio=self.zip_max_compression_ratio,
            max_image_pixels=self.max_image_pixels,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
