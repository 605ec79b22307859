"""`lorabake serve` — the README's first command — as a user runs it: no Postgres, Redis or S3; SQLite, a
local object store and a filesystem broker under one data folder. A single-file base model this time."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support import services
from tests.support.datasets import kohya_entries, write_zip
from tests.support.lora_check import base_pipeline, max_abs_diff, render, render_with_lora, tensors
from tests.support.stack import process_env

CONFIG = {
    "base_model": "tiny-sd15-single.safetensors",
    "output_name": "demo",
    "resolution": 64,
    "min_bucket_reso": 64,  # Kohya's 256 default must not exceed the resolution (64x64 images: one bucket)
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 4,
    "unet_lr": 5e-3,
    "text_encoder_lr": 0,
    "mixed_precision": "no",
    "seed": 3,
}


def serve_env(data: Path, models_dir: Path) -> dict[str, str]:
    env = process_env(
        {
            "LORABAKE_DATA_DIR": str(data),
            "LORABAKE_MODELS_DIR": str(models_dir),
            "LORABAKE_PROGRESS_INTERVAL_SECONDS": "0.2",
        }
    )
    for name in list(env):  # nothing of a production stack may leak in
        if name.startswith("LORABAKE_") and name not in (
            "LORABAKE_DATA_DIR",
            "LORABAKE_MODELS_DIR",
            "LORABAKE_PROGRESS_INTERVAL_SECONDS",
        ):
            del env[name]
    return env


def start_serve(env: dict[str, str], port: int, log: Path):  # noqa: ANN201
    proc = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "serve", "--port", str(port)], env, log
    )
    url = f"http://127.0.0.1:{port}"
    services.wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "lorabake serve", proc)
    return proc, url


# What the default log level must keep out: library warnings, Celery's banner, uvicorn's own lines.
NOISE = ("Traceback", "Warning", "WARNING", "celery@", "kombu", "[transformers]", "Uvicorn running")


def last_box(text: str) -> list[str]:
    """The lines of the box `serve` prints, when they are the last lines of its output; else []."""
    lines = text.rstrip().splitlines()
    rule = lines[-1] if lines else ""
    if not (rule.startswith("+-") and rule.endswith("-+")) or rule not in lines[:-1]:
        return []
    top = len(lines) - 2 - lines[-2::-1].index(rule)  # the rule above it
    return lines[top:]


def wait_for_box(log: Path, proc) -> list[str]:  # noqa: ANN001 - a Popen
    services.wait_until(lambda: bool(last_box(log.read_text())), 60, "the box with the address", proc)
    return last_box(log.read_text())


def processes_using(data: Path) -> list[int]:
    """Processes whose environment points at this data folder (serve, its worker, pool children)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"LORABAKE_DATA_DIR={data}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_serve_trains_and_streams_downloads(tmp_path: Path, models_dir: Path):
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    proc, url = start_serve(serve_env(data, models_dir), services.free_port(), log)
    try:
        key = (data / "api-key").read_text().strip()
        assert any(key in line for line in wait_for_box(log, proc)), "serve must print the API key to use"
        assert (data / "lorabake.db").exists()
        headers = {"Authorization": f"Bearer {key}"}

        started = time.monotonic()
        zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=4, repeats=2, webp=True))
        with open(zip_path, "rb") as fh:
            created = httpx.post(
                f"{url}/v1/jobs",
                headers=headers,
                files={"dataset": ("set.zip", fh)},
                data={"config": json.dumps(CONFIG)},
                timeout=60,
            )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        while True:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            assert time.monotonic() - started < 180, job
            time.sleep(0.3)
        print(f"embedded job finished in {time.monotonic() - started:.1f}s")
        assert job["status"] == "succeeded", job["error"]
        assert [a["name"] for a in job["artifacts"]] == ["demo-000001.safetensors", "demo.safetensors"]
        noise = [line for line in log.read_text().splitlines() if any(n in line for n in NOISE)]
        assert noise == [], "the default log level shows library warnings (the job's worker child too)"

        final = job["artifacts"][-1]
        response = httpx.get(url + final["download_url"], headers=headers)  # streamed by the API itself
        assert response.status_code == 200
        assert response.headers["content-disposition"] == 'attachment; filename="demo.safetensors"'
        path = tmp_path / "demo.safetensors"
        path.write_bytes(response.content)
        assert len(response.content) == final["size_bytes"]
        assert not any(k.startswith("lora_te") for k in tensors(path))  # text_encoder_lr 0: UNet only
        assert max_abs_diff(render_with_lora(path), render(base_pipeline())) > 1e-3
        assert list((data / "objects" / "jobs" / job_id / "artifacts").glob("*/demo.safetensors"))
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-4000:])


def test_stopping_serve_stops_its_worker_and_the_job_resumes_on_restart(tmp_path: Path, models_dir: Path):
    data = tmp_path / "data"
    env = serve_env(data, models_dir)
    proc, url = start_serve(env, services.free_port(), tmp_path / "serve1.log")
    try:
        headers = {"Authorization": f"Bearer {(data / 'api-key').read_text().strip()}"}
        zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=4, repeats=2, webp=False))
        with open(zip_path, "rb") as fh:
            job = httpx.post(
                f"{url}/v1/jobs",
                headers=headers,
                files={"dataset": ("set.zip", fh)},
                data={"config": json.dumps({**CONFIG, "epochs": 8})},  # cut off after epoch 1 of 8
                timeout=60,
            ).json()
        deadline = time.monotonic() + 120
        while not httpx.get(f"{url}/v1/jobs/{job['id']}", headers=headers).json()["artifacts"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stopping = time.monotonic()
    finally:
        services.stop_process(proc, timeout=40)
    # the job handed itself back at its next step: no waiting out the 10 s grace, no SIGKILL
    assert time.monotonic() - stopping < 10, "the job did not stop at its next step"
    handed_back = "handing it back to the queue: the worker is shutting down"
    assert handed_back in (tmp_path / "serve1.log").read_text()
    assert processes_using(data) == [], "serve must not leave its worker behind"

    proc, url = start_serve(env, services.free_port(), tmp_path / "serve2.log")
    try:
        deadline = time.monotonic() + 240
        while (job := httpx.get(f"{url}/v1/jobs/{job['id']}", headers=headers).json())["status"] not in (
            "succeeded",
            "failed",
            "canceled",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2  # cut off once, then resumed by the restarted serve
        assert job["progress"]["step"] == job["progress"]["total_steps"] == 32
        names = [a["name"] for a in job["artifacts"]]
        assert names[-1] == "demo.safetensors" and len(names) == len(set(names))
    finally:
        services.stop_process(proc, timeout=40)
        print((tmp_path / "serve1.log").read_text(errors="replace")[-3000:])
        print((tmp_path / "serve2.log").read_text(errors="replace")[-3000:])


def test_serve_prints_its_address_and_key_last_in_a_box(tmp_path: Path, models_dir: Path):
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    port = services.free_port()
    proc, url = start_serve(serve_env(data, models_dir), port, log)
    try:
        box = wait_for_box(log, proc)
        time.sleep(1.5)  # the worker is up and the server listens: nothing more is printed
        assert last_box(log.read_text()) == box
        key = (data / "api-key").read_text().strip()
        assert any(f"http://127.0.0.1:{port}" in line for line in box), box
        assert any(key in line for line in box), box
        assert all(line.startswith("| ") and line.endswith(" |") for line in box[1:-1]), box
        assert len({len(line) for line in box}) == 1, box
        noise = [line for line in log.read_text().splitlines() if any(n in line for n in NOISE)]
        assert noise == [], "the default log level shows library lines"
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-3000:])


def test_one_sigint_stops_serve_with_an_open_event_stream(tmp_path: Path, models_dir: Path):
    """The job page open (its event stream), one Ctrl-C: serve, its API and its worker are gone within 5 s,
    with no traceback, and the stream ended cleanly (the page reconnects to the next server)."""
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    # tiny SD1.5 jobs go to a queue no worker takes: the job stays queued and its stream open, the worker idle
    env = {**serve_env(data, models_dir), "LORABAKE_QUEUE_ROUTES": json.dumps({"sd1": "lorabake.nobody"})}
    proc, url = start_serve(env, services.free_port(), log)
    try:
        wait_for_box(log, proc)  # the worker is up too
        headers = {"Authorization": f"Bearer {(data / 'api-key').read_text().strip()}"}
        zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=2, repeats=1, webp=False))
        with open(zip_path, "rb") as fh:
            created = httpx.post(
                f"{url}/v1/jobs",
                headers=headers,
                files={"dataset": ("set.zip", fh)},
                data={"config": json.dumps(CONFIG)},
                timeout=60,
            )
        assert created.status_code == 201, created.text
        assert created.json()["queue"] == "lorabake.nobody"
        lines: list[str] = []
        ended: list[BaseException | None] = []

        def watch() -> None:
            try:
                events_url = f"{url}/v1/jobs/{created.json()['id']}/events"
                with httpx.stream("GET", events_url, headers=headers, timeout=30) as stream:
                    for line in stream.iter_lines():
                        lines.append(line)
                ended.append(None)
            except BaseException as exc:
                ended.append(exc)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        services.wait_until(lambda: "event: status" in lines, 10, "the job's first event")

        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - started
        watcher.join(timeout=5)
    finally:
        services.stop_process(proc)
        output = log.read_text(errors="replace")
        print(output[-3000:])
    print(f"serve stopped {took:.1f}s after one SIGINT")
    assert took < 5, f"serve took {took:.1f}s to stop"
    assert proc.returncode == 0
    assert ended == [None], "the event stream must end cleanly, not be cut off"
    assert "Traceback" not in output
    assert processes_using(data) == [], "serve must not leave its worker behind"
