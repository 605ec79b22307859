"""The whole path over HTTP with real parts: API and Celery worker processes, Postgres, Redis, an S3
server, a tiny SD1.5 model. Upload a zip, watch the job, download each epoch, prove the files are the LoRA."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import torch
from PIL import Image

from shared.catalogue.records import record_models
from shared.catalogue.scan import ModelEntry
from shared.config.spec import TrainingConfig
from shared.datasets.zipsafe import ZipLimits
from shared.db.models import RunSpeed
from shared.db.session import session_scope
from tests.support.client import download, finished, submit, wait_for
from tests.support.datasets import kohya_entries, write_zip
from tests.support.lora_check import base_pipeline, max_abs_diff, render, render_with_lora, tensors
from worker.jobs.dataset_prep import prepare_dataset_dir
from worker.training.engine import train_lora

TRAIN_CONFIG = {
    "base_model": "tiny-sd15",
    "output_name": "lisabp_v1",
    "resolution": 64,
    "min_bucket_reso": 64,  # Kohya's 256 default must not exceed the resolution (64x64 images: one bucket)
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
# Kohya's sample settings, tiny: one image after each epoch (a 64x96 PNG, 4 steps).
SAMPLES = {
    "sample_prompts": ["# a comment line", "lisabp woman --n blurry --w 64 --h 96 --d 3 --s 4 --ss euler_a"],
    "sample_every_n_epochs": 1,
}


def usage_totals(stack) -> dict:  # noqa: ANN001
    """The owner's usage since two days ago (a run past midnight stays inside it)."""
    since = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    response = httpx.get(f"{stack.url}/v1/usage", headers=stack.headers, params={"since": since})
    assert response.status_code == 200, response.text
    return response.json()["totals"]


def test_train_over_http_and_download_every_epoch(stack, tmp_path, models_dir):
    zip_path = write_zip(tmp_path / "lisa.zip", kohya_entries(images=4, repeats=2, with_reg=True, webp=True))
    config = {**TRAIN_CONFIG, **SAMPLES}
    usage_before = usage_totals(stack)
    job = submit(stack, zip_path, config)
    # 4 images x 2 repeats, reg matched -> 16 samples / batch 2 = 8 steps per epoch, 2 epochs
    assert job["plan"]["steps_per_epoch"] == 8 and job["plan"]["total_steps"] == 16

    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 16
    assert job["progress"]["epoch"] == 2 and job["progress"]["percent"] == 100.0
    assert job["seed"] == 7
    # the worker counted its work in the owner's usage (other jobs of the owner may have added theirs)
    usage_after = usage_totals(stack)
    assert usage_after["steps_trained"] - usage_before["steps_trained"] >= 16
    assert usage_after["gpu_seconds"] > usage_before["gpu_seconds"]
    # ... and left its measured speed for the estimates of the runs after it (shared/jobs/run_speeds.py)
    assert job["plan"]["estimate"]["family"] == "sd1" and job["plan"]["estimate"]["seconds"] > 0
    with session_scope(stack.env["LORABAKE_DATABASE_URL"]) as session:
        speed = session.get(RunSpeed, job["id"])
        assert (speed.kind, speed.family, speed.gpu_model) == ("train", "sd1", "cpu")
        assert speed.steps_per_second == job["progress"]["steps_per_second"] and speed.steps_per_second > 0
        assert speed.features["steps"] == 16 and speed.features["area"] == 64 * 64

    listed = httpx.get(f"{stack.url}/v1/jobs/{job['id']}/artifacts", headers=stack.headers).json()
    artifacts = [a for a in listed if a["kind"] == "lora"]
    assert [a["name"] for a in artifacts] == ["lisabp_v1-000001.safetensors", "lisabp_v1.safetensors"]
    assert all(a["meta"] is None for a in artifacts)
    assert [(a["epoch"], a["is_final"]) for a in artifacts] == [(1, False), (2, True)]
    files = []
    for artifact in artifacts:
        path = download(stack, artifact, tmp_path / artifact["name"])
        assert path.stat().st_size == artifact["size_bytes"]
        import hashlib

        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]
        files.append(path)

    # One sample per epoch, after that epoch's save, with its settings; each downloads as the asked PNG.
    samples = [a for a in listed if a["kind"] == "sample"]
    assert [(a["name"], a["epoch"], a["step"]) for a in samples] == [
        ("lisabp_v1_e000001_00.png", 1, 8),
        ("lisabp_v1_e000002_00.png", 2, 16),
    ]
    meta = {
        "prompt": "lisabp woman",
        "negative_prompt": "blurry",
        "seed": 3,
        "width": 64,
        "height": 96,
        "cfg_scale": 7.5,
        "steps": 4,
        "sampler": "euler_a",
        "prompt_index": 0,
    }
    assert all(a["meta"] == meta and not a["is_final"] for a in samples)
    for sample in samples:
        path = download(stack, sample, tmp_path / sample["name"])
        assert path.stat().st_size == sample["size_bytes"]
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 96)
            assert image.text["parameters"].startswith("lisabp woman\nNegative prompt: blurry\nSteps: 4,")

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
    local = train_lora(TrainingConfig(**config), dataset, tmp_path / "local", models_dir=models_dir)
    served, trained_here = tensors(files[-1]), tensors(local.files[-1].path)
    assert served.keys() == trained_here.keys()
    assert all(torch.equal(served[k], trained_here[k]) for k in served)

    with_lora = render_with_lora(files[-1])
    assert max_abs_diff(with_lora, render(local.pipeline)) < 1e-4
    assert max_abs_diff(with_lora, render(base_pipeline())) > 1e-3
    # epoch 1 is a different (earlier) LoRA than the final one
    assert max_abs_diff(render_with_lora(files[0]), with_lora) > 1e-5

    # Continued by one epoch (issue 19): a new job numbered on from the kept resume state, through the
    # worker's real path (the source's state and dataset fetched from storage); its file is the 3-epoch run's.
    more = httpx.post(f"{stack.url}/v1/jobs/{job['id']}/continue", headers=stack.headers, json={"epochs": 1})
    assert more.status_code == 201, more.text
    continued = wait_for(stack, more.json()["id"], finished)
    assert continued["status"] == "succeeded", continued["error"]
    assert continued["continued_from"] == job["id"] and continued["progress"]["step"] == 24
    added = [a for a in continued["artifacts"] if a["kind"] == "lora"]
    assert [(a["name"], a["epoch"], a["is_final"]) for a in added] == [("lisabp_v1.safetensors", 3, True)]
    three = TrainingConfig(**{**config, "epochs": 3})
    longer = train_lora(three, dataset, tmp_path / "three", models_dir=models_dir)
    third = tensors(download(stack, added[0], tmp_path / "continued.safetensors"))
    from_start = tensors(longer.files[-1].path)
    assert third.keys() == from_start.keys() and all(torch.equal(third[k], from_start[k]) for k in third)


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


def test_a_base_model_that_cannot_load_fails_the_job_clearly(stack, stack_db, models_dir, tmp_path):
    # Another worker reported it, so the API takes the job; this worker has no such model.
    with session_scope(stack_db) as session:
        record_models(
            session, "elsewhere:1", [ModelEntry("gone-model", "sd1", None, "diffusers", "local", 1)]
        )
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    job = submit(stack, zip_path, {**TRAIN_CONFIG, "base_model": "gone-model"})
    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "base_model"
    assert "gone-model" in job["error"]["message"]
    assert str(models_dir) not in json.dumps(job)  # no server path reaches a client
    assert job["artifacts"] == []


def test_a_base_model_no_worker_has_is_refused_at_submission(stack, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        response = httpx.post(
            f"{stack.url}/v1/jobs",
            headers=stack.headers,
            files={"dataset": ("s.zip", fh)},
            data={"config": json.dumps({**TRAIN_CONFIG, "base_model": "tiny-sd51"})},
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["close_matches"][0] == "tiny-sd15"


def sse_events(body: str) -> list[tuple[int, str, dict]]:
    parsed = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "id" in fields:
            parsed.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return parsed


def test_events_stream_live_while_the_job_runs_and_resume_from_last_event_id(stack, tmp_path):
    zip_path = write_zip(tmp_path / "live.zip", kohya_entries(images=4, repeats=2, webp=False))
    job = submit(stack, zip_path, {**TRAIN_CONFIG, "epochs": 3})
    url = f"{stack.url}/v1/jobs/{job['id']}/events"
    with httpx.stream("GET", url, headers=stack.headers, timeout=120) as stream:
        body = "".join(stream.iter_text())  # ends when the job does
    events = sse_events(body)
    ids = [e[0] for e in events]
    assert ids == sorted(set(ids))  # each once, in order
    kinds = [e[1] for e in events]
    assert kinds.count("progress") >= 2 and kinds.count("artifact") == 3
    assert events[-1][1:] == ("status", {"status": "succeeded"})
    # A client that lost the stream after the first artifact gets exactly what followed.
    cut = next(i for i, e in enumerate(events) if e[1] == "artifact")
    with httpx.stream(
        "GET", url, headers={**stack.headers, "Last-Event-ID": str(ids[cut])}, timeout=60
    ) as stream:
        rest = sse_events("".join(stream.iter_text()))
    assert rest == events[cut + 1 :]


def test_readiness_counts_the_workers_alive_from_their_heartbeats(stack):
    deadline = time.monotonic() + 60
    while (ready := httpx.get(f"{stack.url}/readyz").json())["workers_alive"] != 1:
        assert time.monotonic() < deadline, ready
        time.sleep(0.5)
    assert ready["status"] == "ready" and set(ready["checks"].values()) == {"ok"}
