"""The whole path over HTTP with real parts: API and Celery worker processes, Postgres, Redis, an S3
server, a tiny SD1.5 model. Upload a zip, watch the job, download each epoch, prove the files are the LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from shared.spec import TrainingConfig
from shared.zipsafe import ZipLimits
from tests.support import services
from tests.support.datasets import kohya_entries, write_zip
from tests.support.lora_check import base_pipeline, max_abs_diff, render, render_with_lora, tensors
from tests.support.stack import process_env, stack_env
from worker.dataset_prep import prepare_dataset_dir
from worker.training.engine import train_lora

TRAIN_CONFIG = {
    "base_model": "tiny-sd15",
    "output_name": "lisabp_v1",
    "resolution": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "unet_lr": 5e-3,
    "text_encoder_lr": 1e-3,
    "mixed_precision": "no",
    "save_precision": "float",
    "seed": 7,
}


@dataclass
class Stack:
    url: str
    key: str
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def lorabake(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lorabake.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3_server, models_dir, tmp_path_factory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    bucket = "e2e-lorabake"
    s3_server.client().create_bucket(Bucket=bucket)
    env = process_env(
        stack_env(
            pg_url=pg_url,
            redis_url=redis_url,
            s3_url=s3_server.url,
            bucket=bucket,
            data_dir=tmp_path_factory.mktemp("data"),
            models_dir=models_dir,
        )
    )
    key = lorabake("create-key", "--owner", "e2e", env=env)
    port = services.free_port()
    worker = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "worker"], env, logs / "worker.log"
    )
    api = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "api", "--port", str(port)], env, logs / "api.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "API", api)
        yield Stack(url, key, env)
    finally:
        services.stop_process(api)
        services.stop_process(worker)
        for log in logs.iterdir():  # shown by pytest only when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


def submit(stack: Stack, zip_path: Path, config: dict) -> dict:
    with open(zip_path, "rb") as fh:
        response = httpx.post(
            f"{stack.url}/v1/jobs",
            headers=stack.headers,
            timeout=60,
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps(config)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(stack: Stack, job_id: str, done, timeout: float = 240) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.headers).json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def download(stack: Stack, artifact: dict, dest: Path) -> Path:
    response = httpx.get(
        stack.url + artifact["download_url"], headers=stack.headers, follow_redirects=True, timeout=60
    )
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest


def test_train_over_http_and_download_every_epoch(stack, tmp_path, models_dir):
    zip_path = write_zip(tmp_path / "lisa.zip", kohya_entries(images=4, repeats=2, with_reg=True, webp=True))
    job = submit(stack, zip_path, TRAIN_CONFIG)
    # 4 images x 2 repeats, reg matched -> 16 samples / batch 2 = 8 steps per epoch, 2 epochs
    assert job["plan"]["steps_per_epoch"] == 8 and job["plan"]["total_steps"] == 16

    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 16
    assert job["progress"]["epoch"] == 2 and job["progress"]["percent"] == 100.0
    assert job["seed"] == 7

    artifacts = httpx.get(f"{stack.url}/v1/jobs/{job['id']}/artifacts", headers=stack.headers).json()
    assert [a["name"] for a in artifacts] == ["lisabp_v1-000001.safetensors", "lisabp_v1.safetensors"]
    assert [(a["epoch"], a["is_final"]) for a in artifacts] == [(1, False), (2, True)]
    files = []
    for artifact in artifacts:
        path = download(stack, artifact, tmp_path / artifact["name"])
        assert path.stat().st_size == artifact["size_bytes"]
        import hashlib

        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]
        files.append(path)

    # The status history, as a client streaming events sees it.
    with httpx.stream(
        "GET", f"{stack.url}/v1/jobs/{job['id']}/events", headers=stack.headers, timeout=30
    ) as stream:
        body = "".join(stream.iter_text())
    statuses = [
        json.loads(line[6:])["status"]
        for block in body.split("\n\n")
        if "event: status" in block
        for line in block.splitlines()
        if line.startswith("data: ")
    ]
    assert statuses == ["queued", "preparing", "training", "uploading", "succeeded"]

    # The files are the trained LoRA: same training in this process gives the same tensors and output.
    dataset = prepare_dataset_dir(zip_path, tmp_path / "dataset", ZipLimits())
    local = train_lora(TrainingConfig(**TRAIN_CONFIG), dataset, tmp_path / "local", models_dir=models_dir)
    served, trained_here = tensors(files[-1]), tensors(local.files[-1].path)
    assert served.keys() == trained_here.keys()
    assert all(torch.equal(served[k], trained_here[k]) for k in served)

    with_lora = render_with_lora(files[-1])
    assert max_abs_diff(with_lora, render(local.pipeline)) < 1e-4
    assert max_abs_diff(with_lora, render(base_pipeline())) > 1e-3
    # epoch 1 is a different (earlier) LoRA than the final one
    assert max_abs_diff(render_with_lora(files[0]), with_lora) > 1e-5


def test_cancel_a_running_job_keeps_saved_epochs(stack, tmp_path):
    zip_path = write_zip(tmp_path / "long.zip", kohya_entries(images=4, repeats=2, webp=False))
    job = submit(stack, zip_path, {**TRAIN_CONFIG, "epochs": 200, "save_precision": "fp16"})
    job = wait_for(stack, job["id"], lambda j: len(j["artifacts"]) >= 1 or finished(j))
    assert job["status"] == "training", job
    response = httpx.post(f"{stack.url}/v1/jobs/{job['id']}/cancel", headers=stack.headers)
    assert response.status_code == 202 and response.json()["cancel_requested"] is True

    job = wait_for(stack, job["id"], finished, timeout=60)
    assert job["status"] == "canceled"
    assert 0 < job["progress"]["step"] < job["progress"]["total_steps"]
    assert job["artifacts"] and all(not a["is_final"] for a in job["artifacts"])
    saved = download(stack, job["artifacts"][0], tmp_path / "epoch1.safetensors")
    assert any(k.endswith(".alpha") for k in tensors(saved))


def test_a_base_model_that_cannot_load_fails_the_job_clearly(stack, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    job = submit(stack, zip_path, {**TRAIN_CONFIG, "base_model": "no-such-model"})
    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "failed"
    assert "no-such-model" in job["error"]["message"]
    assert job["artifacts"] == []
