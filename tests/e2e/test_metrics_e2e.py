"""Metrics from the real processes: a `lorabake worker` trains a tiny job in a Celery prefork child, and its
own port (served by its duties process from the child's multiprocess files) counts the job's steps and its
end; the `lorabake api` process reports the job from the database and the submission by route template."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import Stack, finished, submit, wait_for
from tests.support.datasets import kohya_entries, write_zip
from tests.support.services import wait_until

CONFIG = {
    "base_model": "tiny-sd15",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 1,
    "batch_size": 2,
    "network_dim": 4,
    "mixed_precision": "no",
}
RUNNING = ("queued", "preparing", "training", "uploading")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def idle(stack: Stack) -> bool:
    """No job of an earlier test still running or waiting, so this test's job is the only one counted."""
    samples = scrape(f"{stack.url}/metrics")
    return ("lorabake_jobs", frozenset({("status", "queued")})) in samples and not any(
        value(samples, "lorabake_jobs", status=s) for s in RUNNING
    )


def test_the_worker_port_counts_a_jobs_steps_and_end_and_the_api_reports_it(stack: Stack, tmp_path):
    worker_url = f"http://127.0.0.1:{stack.env['LORABAKE_WORKER_METRICS_PORT']}/metrics"
    wait_until(lambda: scrape(worker_url) is not None, 60, "the worker's metrics port")
    wait_until(lambda: idle(stack), 240, "the stack idle")
    before = scrape(worker_url)

    job = submit(stack, write_zip(tmp_path / "m.zip", kohya_entries(images=4, webp=False)), CONFIG)
    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    steps = job["plan"]["total_steps"]
    assert steps > 0

    after = scrape(worker_url)
    # the child that trained it is gone or going; what it counted stays with the worker
    assert value(after, "lorabake_worker_steps_total") - value(before, "lorabake_worker_steps_total") == steps
    done = {
        o: value(after, "lorabake_worker_jobs_finished_total", outcome=o)
        - value(before, "lorabake_worker_jobs_finished_total", outcome=o)
        for o in ("succeeded", "failed", "canceled", "handed_back", "lost")
    }
    assert done == {"succeeded": 1, "failed": 0, "canceled": 0, "handed_back": 0, "lost": 0}
    # and its live gauges go with its process (the cleanup at each scrape)
    wait_until(
        lambda: ("lorabake_worker_job_step", frozenset({("job_id", job["id"])})) not in scrape(worker_url),
        60,
        "the finished job's step gauge gone",
    )

    api = scrape(f"{stack.url}/metrics")
    assert value(api, "lorabake_jobs", status="succeeded") >= 1
    assert value(api, "lorabake_job_running_seconds_count", status="succeeded") >= 1
    assert value(api, "lorabake_workers_alive") >= 1
    assert value(api, "lorabake_http_requests_total", method="POST", route="/v1/jobs", status="201") >= 1
    assert (
        value(api, "lorabake_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 1
    )
