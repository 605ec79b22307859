"""One `lorabake serve` (SQLite, local store, filesystem broker, one real worker) for every client test, the
way a user runs it, and the jobs the tests share: one trained to the end through `lorabake submit --watch`,
one canceled mid-training while its event stream was cut (and, while it trained, another owner's job
queued behind it: the queue as the client and `lorabake watch` see it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lorabake.client import Event, Job, LorabakeAPIError, LorabakeClient, Queue
from tests.client.receiver import Receiver
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
class QueueSeen:
    """Another owner's job queued while the long job trained (the one worker busy), then canceled."""

    long_job_id: str
    queued: Job  # get_job() of it while it waited
    tenant_queue: Queue  # get_queue() with its owner's key
    admin_queue: Queue  # get_queue() with the embedded key (the long job's owner)
    over_limit: LorabakeAPIError  # a second submission past the key's max_queued 1
    submissions_sent: int  # POST /v1/jobs requests the tenant's client sent for its two submissions
    tenant_jobs_after_refusal: int
    watch_returncode: int
    watch_stdout: str
    watch_stderr: str
    after_cancel: Job
    tenant_queue_after_cancel: Queue


@dataclass(frozen=True)
class CanceledRun:
    job_id: str
    events: list[Event]  # as the client handed them out, through the proxy that cut the stream
    reconnects: list[Exception | None]
    cancel: subprocess.CompletedProcess
    queue: QueueSeen


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
    env = serve_env(data, models_dir)
    # webhook receivers and dataset URLs of the tests are on 127.0.0.1; retries come quickly
    env.update(LORABAKE_ALLOW_PRIVATE_URLS="1", LORABAKE_WEBHOOK_RETRY_SCHEDULE="0.5,1,1")
    proc, url = start_serve(env, port, log)
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


class CountingTransport(httpx.HTTPTransport):
    """httpx's own transport, noting each request it sends (to see what the client retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


def watch_until(
    served: Served, key: str, job_id: str, needle: str, then: Callable[[], object]
) -> tuple[int, str, str]:
    """`lorabake watch JOB` with `key`: once its output shows `needle` (or after 60 s), `then()`; returns
    its exit code and output once it has ended."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorabake.cli", "watch", job_id],
        env=process_env({"LORABAKE_URL": served.url, "LORABAKE_API_KEY": key}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in stdout:
            lines.append(line)
            if needle in line:
                seen.set()
        seen.set()  # it ended without it

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait(60)
    then()
    stderr = proc.stderr.read()
    code = proc.wait(timeout=60)
    reader.join(timeout=10)
    return code, "".join(lines), stderr


def queue_behind(served: Served, dataset_dir: Path, long_job_id: str) -> QueueSeen:
    """While the long job holds the one worker: another owner's key (max_queued 1) queues a job, which
    waits; a second is refused (429); `lorabake watch` shows its place in line; then it is canceled."""
    with LorabakeClient(served.url, served.key) as admin:
        key = admin.create_key("queue-tenant", name="queue", limits={"max_queued": 1}).key
        transport = CountingTransport()
        with LorabakeClient(served.url, key, transport=transport) as tenant:
            waiting = tenant.submit_job({**CONFIG, "output_name": "behind"}, dataset=dataset_dir)
            queued = tenant.get_job(waiting.id)
            tenant_queue, admin_queue = tenant.get_queue(), admin.get_queue()
            try:
                tenant.submit_job(CONFIG, dataset=dataset_dir)
            except LorabakeAPIError as exc:
                over_limit = exc
            else:
                raise AssertionError("a second queued job went past max_queued 1")
            submissions = transport.sent.count(("POST", "/v1/jobs"))
            jobs_after = len(tenant.list_jobs().items)
            code, out, err = watch_until(
                served, key, waiting.id, "queued: position", lambda: tenant.cancel_job(waiting.id)
            )
            return QueueSeen(
                long_job_id,
                queued,
                tenant_queue,
                admin_queue,
                over_limit,
                submissions,
                jobs_after,
                code,
                out,
                err,
                tenant.get_job(waiting.id),
                tenant.get_queue(),
            )


@pytest.fixture(scope="package")
def canceled_job(served: Served, dataset_dir: Path) -> CanceledRun:
    """A long job followed through a proxy that cuts the stream at its first progress event; once events
    flow again after the reconnection, another owner's job is queued behind it (`queue_behind`), then
    `lorabake cancel` stops it."""
    with LorabakeClient(served.url, served.key) as direct:
        job = direct.submit_job(LONG_CONFIG, dataset=dataset_dir)
    proxy = FaultProxy("127.0.0.1", served.port).start()
    events: list[Event] = []
    reconnects: list[Exception | None] = []
    cancel = queue = None
    try:
        with LorabakeClient(f"http://127.0.0.1:{proxy.port}", served.key) as client:
            for event in client.events(job.id, on_reconnect=lambda _n, error: reconnects.append(error)):
                events.append(event)
                if event.type != "progress":
                    continue
                if not reconnects:
                    proxy.cut()
                elif cancel is None:
                    queue = queue_behind(served, dataset_dir, job.id)
                    cancel = served.cli("cancel", job.id)
    finally:
        proxy.stop()
    assert cancel is not None and queue is not None, f"the job ended before it was canceled: {events[-3:]}"
    return CanceledRun(job.id, events, reconnects, cancel, queue)
