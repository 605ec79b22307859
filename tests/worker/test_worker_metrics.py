"""The worker's metrics port, with the multiprocess design it relies on: training children (here: plain
processes started with the folder in their environment, as Celery's forks are) write their numbers to files,
and the server sums them; a child's live gauges go when it does, what it counted stays.

A real `lorabake worker` training a job is scraped in tests/e2e/test_metrics_e2e.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import prometheus_client  # noqa: F401 - imported before anything here could set PROMETHEUS_MULTIPROC_DIR
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.support.services import free_port
from worker.metrics.gpu import device_memory
from worker.metrics.process_dir import VARIABLE
from worker.metrics.server import serve_worker_metrics

TOKEN = "worker-token"
# A training child's part: two steps of job-a, then (told to) its end, as the runner reports them.
CHILD = """
import sys
from worker.metrics import job
job.job_progress("job-a", 1, None)
job.job_progress("job-a", 2, 3.5)
print("stepped", flush=True)
sys.stdin.readline()
job.job_ended("job-a", "succeeded")
"""


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "metrics"
    folder.mkdir()
    port = free_port()
    settings = Settings(
        data_dir=tmp_path, worker_metrics_port=port, worker_metrics_host="127.0.0.1", metrics_token=TOKEN
    )
    server = serve_worker_metrics(settings, str(folder))
    assert server is not None
    yield f"http://127.0.0.1:{port}/metrics", folder
    server.shutdown()
    server.server_close()


def test_a_childs_numbers_are_served_its_gauges_go_with_it_and_its_counts_stay(served):
    url, folder = served
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env={**os.environ, VARIABLE: str(folder)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "stepped"
        during = scrape(url)
        assert during[("lorabake_worker_job_step", frozenset({("job_id", "job-a")}))] == 2
        assert during[("lorabake_worker_job_steps_per_second", frozenset({("job_id", "job-a")}))] == 3.5
        assert during[("lorabake_worker_steps_total", frozenset())] == 2
        assert during[("lorabake_worker_jobs_finished_total", frozenset({("outcome", "succeeded")}))] == 0
    finally:
        child.communicate("end\n", timeout=30)
    assert child.returncode == 0

    after = scrape(url)
    assert not [name for name, _ in after if name.startswith("lorabake_worker_job_step")]
    assert after[("lorabake_worker_steps_total", frozenset())] == 2
    finished = {
        dict(labels)["outcome"]: v for (n, labels), v in after.items() if n.endswith("finished_total")
    }
    assert finished == {"succeeded": 1, "failed": 0, "canceled": 0, "handed_back": 0, "lost": 0}
    assert not list(folder.glob("gauge_live*"))  # the dead child's gauge files were dropped


def test_the_worker_port_wants_the_metrics_token(served):
    url, _ = served
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert scrape(url) is not None


def test_the_port_is_off_by_default(tmp_path):
    assert Settings(data_dir=tmp_path).worker_metrics_port == 0
    assert serve_worker_metrics(Settings(data_dir=tmp_path), str(tmp_path)) is None


def test_gpu_memory_is_read_only_where_cuda_runs():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert device_memory() == []  # a CPU: no series at all
        return
    tensor = torch.ones(1024, 1024, device="cuda")  # 4 MiB
    readings = {m.device: m for m in device_memory()}
    current = readings[str(torch.cuda.current_device())]
    assert current.allocated >= tensor.numel() * 4 and current.peak >= current.allocated
