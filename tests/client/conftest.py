"""One `lorabake serve` (SQLite, local store, filesystem broker, one real worker) for every client test, the
way a user runs it, and the jobs the tests share: one trained to the end through `lorabake submit --watch`,
one canceled mid-training while its event stream was cut."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lorabake.client import Event, LorabakeClient
from tests.e2e.test_embedded_e2e import serve_env, start_serve
from tests.support import services
from tests.support.datasets import kohya_entries
from tests.support.faultproxy import FaultProxy
from tests.support.stack import process_env

CONFIG = {
    "base_model": "tiny-sd15",
    "output_name": "demo",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 4,
    "mixed_precision": "no",
    "seed": 3,
    "sample_prompts": ["lisabp woman --w 64 --h 64 --s 2"],
    "sample_every_n_epochs": 1,
}
LONG_CONFIG = {**CONFIG, "output_name": "long", "epochs": 400, "sample_prompts": []}


@dataclass(frozen=True)
class Served:
    url: str
    key: str
    port: int
    data: Path

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """`lorabake ARGS` as a user runs it against this server, output captured (so: not a terminal)."""
        return subprocess.run(
            [sys.executable, "-m", "lorabake.cli", *args],
            env=process_env({"LORABAKE_URL": self.url, "LORABAKE_API_KEY": self.key, **env}),
            capture_output=True,
            text=True,
            timeout=240,
        )


@dataclass(frozen=True)
class Watched:
    job_id: str
    run: subprocess.CompletedProcess


@dataclass(frozen=True)
class CanceledRun:
    job_id: str
    events: list[Event]  # as the client handed them out, through the proxy that cut the stream
    reconnects: list[Exception | None]
    cancel: subprocess.CompletedProcess


def write_dataset(root: Path) -> Path:
    """A Kohya folder, as a user has it on disk: `img/2_lisabp woman/` with images and captions."""
    for name, data in kohya_entries(images=4, repeats=2, webp=False).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="package")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    data, log = root / "data", root / "serve.log"
    port = services.free_port()
    proc, url = start_serve(serve_env(data, models_dir), port, log)
    try:
        yield Served(url, (data / "api-key").read_text().strip(), port, data)
    finally:
        services.stop_process(proc, timeout=40)
        print(log.read_text(errors="replace")[-4000:])  # shown by pytest only when a test failed


@pytest.fixture
def api(served: Served) -> Iterator[LorabakeClient]:
    with LorabakeClient(served.url, served.key) as client:
        yield client


@pytest.fixture(scope="package")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lisa"))


@pytest.fixture(scope="package")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "cfg.json"
    path.write_text(json.dumps(CONFIG))
    return path


@pytest.fixture(scope="package")
def watched(served: Served, dataset_dir: Path, config_file: Path) -> Watched:
    """`lorabake submit FOLDER --config cfg.json --watch`, run to the job's end."""
    run = served.cli("submit", str(dataset_dir), "--config", str(config_file), "--watch")
    job_id = run.stdout.split("\n", 1)[0].strip()
    return Watched(job_id, run)


@pytest.fixture(scope="package")
def canceled_job(served: Served, dataset_dir: Path) -> CanceledRun:
    """A long job followed through a proxy that cuts the stream at its first progress event; once events
    flow again after the reconnection, `lorabake cancel` stops it."""
    with LorabakeClient(served.url, served.key) as direct:
        job = direct.submit_job(LONG_CONFIG, dataset=dataset_dir)
    proxy = FaultProxy("127.0.0.1", served.port).start()
    events: list[Event] = []
    reconnects: list[Exception | None] = []
    cancel = None
    try:
        with LorabakeClient(f"http://127.0.0.1:{proxy.port}", served.key) as client:
            for event in client.events(job.id, on_reconnect=lambda _n, error: reconnects.append(error)):
                events.append(event)
                if event.type != "progress":
                    continue
                if not reconnects:
                    proxy.cut()
                elif cancel is None:
                    cancel = served.cli("cancel", job.id)
    finally:
        proxy.stop()
    assert cancel is not None, f"the job ended before it was canceled: {events[-3:]}"
    return CanceledRun(job.id, events, reconnects, cancel)
