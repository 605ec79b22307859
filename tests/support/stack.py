"""Settings for the production-shaped stack (Postgres + Redis + S3), in-process or as env for subprocesses."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from shared.settings import Settings


def stack_env(
    *,
    pg_url: str,
    redis_url: str,
    s3_url: str,
    bucket: str,
    data_dir: Path,
    models_dir: Path,
    queue: str | None = None,
    **extra: str,
) -> dict[str, str]:
    env = {
        "LORABAKE_DATA_DIR": str(data_dir),
        "LORABAKE_DATABASE_URL": pg_url,
        "LORABAKE_BROKER_URL": redis_url,
        "LORABAKE_QUEUE_NAME": queue or f"lorabake-test-{uuid.uuid4().hex[:8]}",
        "LORABAKE_STORAGE_BACKEND": "s3",
        "LORABAKE_S3_BUCKET": bucket,
        "LORABAKE_S3_ENDPOINT_URL": s3_url,
        "LORABAKE_S3_ACCESS_KEY_ID": "testing",
        "LORABAKE_S3_SECRET_ACCESS_KEY": "testing",
        "LORABAKE_MODELS_DIR": str(models_dir),
        "LORABAKE_PROGRESS_INTERVAL_SECONDS": "0.2",
    }
    env.update({f"LORABAKE_{k.upper()}": v for k, v in extra.items()})
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def process_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a child process gets: ours (PATH, HF_HUB_OFFLINE...) plus the stack's settings."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", **env}


def bucket_keys(s3_server, bucket: str) -> list[str]:  # noqa: ANN001 - the tests' S3Server
    """Every object key in the bucket (to show that a refused request stored nothing)."""
    return [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
