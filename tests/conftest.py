"""Session-wide real services: a fresh Postgres database, Redis, an S3 server, tiny models on disk.

A service that cannot be reached fails the session loudly: CI must never pass by skipping.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import boto3  # noqa: E402
import pytest  # noqa: E402

from tests.support import services  # noqa: E402


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self):  # noqa: ANN201
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@pytest.fixture(scope="session")
def pg_url(models_dir: Path) -> Iterator[str]:
    """The session's database, its model catalogue holding the tiny models (as a worker reports them)."""
    with services.migrated_database(models_dir) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    services.check_redis()
    return services.REDIS_URL


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    proc, url = services.start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield S3Server(url)
    services.stop_process(proc)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SD1.5 base models: a diffusers folder `tiny-sd15` and a single file `tiny-sd15-single.safetensors`
    whose configs come from `configs/sd15` (the shared SD1.x config folder, weights left out); a tiny FLUX.1
    dev diffusers folder `tiny-flux` and a tiny Chroma one `tiny-chroma`; tiny captioners `tiny-blip` (BLIP),
    `tiny-wd14` (an ONNX tagger) and the
    vision-language `tiny-florence2`, `tiny-qwen2.5-vl`, `tiny-joycaption` (about 0.1 s each)."""
    from worker.devtools.single_file import save_sd15_single_file
    from worker.devtools.tiny_captioners import (
        save_tiny_blip,
        save_tiny_florence2,
        save_tiny_joycaption,
        save_tiny_qwen2_5_vl,
        save_tiny_wd14,
    )
    from worker.devtools.tiny_flux import save_tiny_chroma, save_tiny_flux
    from worker.devtools.tiny_models import build_tiny_sd15_pipeline, save_tiny_sd15

    root = tmp_path_factory.mktemp("models")
    save_tiny_sd15(root / "tiny-sd15")
    save_sd15_single_file(build_tiny_sd15_pipeline(), root / "tiny-sd15-single.safetensors")
    save_tiny_blip(root / "tiny-blip")
    save_tiny_wd14(root / "tiny-wd14")
    save_tiny_florence2(root / "tiny-florence2")
    save_tiny_qwen2_5_vl(root / "tiny-qwen2.5-vl")
    save_tiny_joycaption(root / "tiny-joycaption")
    save_tiny_flux(root / "tiny-flux")
    save_tiny_chroma(root / "tiny-chroma")
    shutil.copytree(
        root / "tiny-sd15", root / "configs" / "sd15", ignore=shutil.ignore_patterns("*.safetensors")
    )
    return root


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket per test, so 'nothing was stored' can be checked exactly."""
    name = f"lb-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
