"""All configuration, from `LORABAKE_*` environment variables (pydantic-settings).

Defaults give the embedded mode: everything under one data folder (SQLite, a local object store, a
filesystem Celery broker), so `lorabake serve` needs no server. Production sets the URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.zipsafe import ZipLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORABAKE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""  # default: sqlite file in data_dir
    broker_url: str = ""  # default: kombu's filesystem transport in data_dir/broker
    queue_name: str = "lorabake.train"

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

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    max_upload_bytes: int = 2 * 1024**3
    zip_max_entries: int = 10_000
    zip_max_total_uncompressed: int = 8 * 1024**3
    zip_max_entry_uncompressed: int = 512 * 1024**2
    zip_max_compression_ratio: float = 100.0
    max_image_pixels: int = 64_000_000

    progress_interval_seconds: float = 1.0
    task_soft_time_limit: int = 12 * 3600
    task_time_limit: int = 12 * 3600 + 300
    max_attempts: int = 3

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
        return self

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

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
