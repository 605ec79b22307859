"""Owners take turns on a real worker: one owner's backlog does not make a later owner's job wait for all
of it, and a key's `max_running` holds it to that many jobs at once."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import replace
from datetime import datetime

import httpx

from tests.e2e.conftest import lorabake
from tests.support import services
from tests.support.client import finished, wait_for
from tests.support.datasets import kohya_entries, write_zip

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1, "batch_size": 2}


def submit(url: str, key: str, zip_path, queue: str) -> str:  # noqa: ANN001
    with open(zip_path, "rb") as fh:
        created = httpx.post(
            f"{url}/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            files={"dataset": ("s.zip", fh)},
            data={"config": json.dumps(CONFIG), "queue": queue},
            timeout=60,
        )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_a_later_owner_runs_second_on_a_worker_busy_with_a_backlog(stack, tmp_path):
    queue = f"fair-{uuid.uuid4().hex[:6]}"
    backlog_key = lorabake("create-key", "--owner", f"backlog-{queue}", env=stack.env)
    later_key = lorabake("create-key", "--owner", f"later-{queue}", env=stack.env)
    worker = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "worker", "--queues", queue], stack.env, tmp_path / "w.log"
    )
    try:

        def served() -> bool:
            queues = httpx.get(f"{stack.url}/v1/queue", headers=stack.headers).json()["queues"]
            return any(q["name"] == queue and q["workers"] == 1 for q in queues)

        services.wait_until(served, 60, f"a worker on {queue}", worker)
        zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
        backlog = [submit(stack.url, backlog_key, zip_path, queue) for _ in range(3)]
        later = submit(stack.url, later_key, zip_path, queue)
        jobs = {}
        for job_id, key in [*((j, backlog_key) for j in backlog), (later, later_key)]:
            done = wait_for(replace(stack, key=key), job_id, finished, timeout=300)
            assert done["status"] == "succeeded", done["error"]
            jobs[job_id] = done
        by_start = sorted(jobs, key=lambda j: datetime.fromisoformat(jobs[j]["started_at"]))
        assert by_start == [backlog[0], later, backlog[1], backlog[2]]
    finally:
        services.stop_process(worker)
