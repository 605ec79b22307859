"""A worker started on a named queue (a GPU class) takes the jobs that ask for it, and only it does."""

from __future__ import annotations

import json
import sys
import uuid

import httpx

from tests.support import services
from tests.support.client import finished, wait_for
from tests.support.datasets import kohya_entries, write_zip

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1, "batch_size": 2}


def test_a_job_for_a_named_queue_runs_on_the_worker_that_serves_it(stack, tmp_path):
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "named-worker.log"
    # --log-level debug: Celery's own lines, which say what this worker ran
    command = [sys.executable, "-m", "lorabake.cli", "worker", "--queues", name, "--log-level", "debug"]
    worker = services.start_process(command, stack.env, log)
    try:

        def served() -> bool:
            queues = httpx.get(f"{stack.url}/v1/queue", headers=stack.headers).json()["queues"]
            return any(q["name"] == name and q["workers"] == 1 for q in queues)

        services.wait_until(served, 60, f"a worker on {name}", worker)
        zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
        with open(zip_path, "rb") as fh:
            created = httpx.post(
                f"{stack.url}/v1/jobs",
                headers=stack.headers,
                files={"dataset": ("s.zip", fh)},
                data={"config": json.dumps(CONFIG), "queue": name},
                timeout=60,
            )
        assert created.status_code == 201, created.text
        assert created.json()["queue"] == name
        done = wait_for(stack, created.json()["id"], finished, timeout=240)
        assert done["status"] == "succeeded", done["error"]
        # this worker trained it (its only task: nothing else is sent to this queue), not the stack's own
        trained = [line for line in log.read_text().splitlines() if "Task lorabake.train_job[" in line]
        assert any(line.endswith(": None") and "succeeded" in line for line in trained), trained
    finally:
        services.stop_process(worker)
