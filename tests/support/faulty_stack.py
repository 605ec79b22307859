"""The production shape under faults: `lorabake api` and `lorabake worker` processes on a Postgres database,
a Redis server and an S3 bucket of the test's own, each reached through a fault-injecting proxy, and a
monitor that watches the API the whole time (every status code it answered, every job state it showed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support import services
from tests.support.client import Stack
from tests.support.faultproxy import FaultProxy
from tests.support.stack import process_env, stack_env

# Short leases and passes, so a dead worker's job is back in seconds (the defaults take about a minute).
FAULT_SETTINGS = {
    "lease_seconds": "6",
    "lease_renew_seconds": "1",
    "reconcile_interval_seconds": "1",
    "requeue_after_seconds": "3",
    "outage_retry_seconds": "120",
    "db_connect_timeout_seconds": "2",
    "s3_connect_timeout_seconds": "2",
    "s3_read_timeout_seconds": "3",
    "broker_timeout_seconds": "2",
}


class RedisServer:
    """A redis-server of the test's own (never the machine's), without persistence: a restart loses all."""

    def __init__(self, workdir: Path) -> None:
        self.port = services.free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        services.wait_until(client.ping, 10, "redis-server", self.proc)
        client.close()
        return self

    def restart(self) -> None:
        """Killed and started again: every queued message is gone, as after a failover without persistence."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class Sample:
    at: float
    path: str
    code: int
    body: dict | None


@dataclass
class Monitor:
    """Polls the API in a thread: the job, the job list and readiness, every `every` seconds."""

    stack: Stack
    job_ids: list[str] = field(default_factory=list)
    every: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.stack.url, headers=self.stack.headers, timeout=30) as client:
            while not self._stop.is_set():
                paths = [f"/v1/jobs/{j}" for j in list(self.job_ids)] + ["/v1/jobs?limit=5", "/readyz"]
                for path in paths:
                    try:
                        response = client.get(path)
                    except httpx.HTTPError:
                        self.samples.append(Sample(time.monotonic(), path, 0, None))
                        continue
                    body = (
                        response.json()
                        if response.headers.get("content-type", "").startswith("application/json")
                        else None
                    )
                    self.samples.append(Sample(time.monotonic(), path, response.status_code, body))
                self._stop.wait(self.every)

    def codes(self) -> Counter:
        return Counter(s.code for s in self.samples)

    def job_states(self, job_id: str) -> list[tuple[float, str, int, int]]:
        """(time, status, step, attempts) of every answer the API gave about the job."""
        return [
            (s.at, s.body["status"], s.body["progress"]["step"], s.body["attempts"])
            for s in self.samples
            if s.path == f"/v1/jobs/{job_id}" and s.code == 200 and s.body
        ]


class FaultyStack:
    def __init__(self, *, pg_url: str, s3_url: str, bucket: str, models_dir: Path, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir).start()
        pg = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
        s3 = urlsplit(s3_url)
        self.proxies = {
            "database": FaultProxy(pg.hostname, pg.port).start(),
            "broker": FaultProxy("127.0.0.1", self.redis.port).start(),
            "storage": FaultProxy(s3.hostname, s3.port).start(),
        }
        self.pg_url, self.s3_url, self.bucket = pg_url, s3_url, bucket
        self.env = process_env(
            stack_env(
                pg_url=self.proxies["database"].url_for(pg_url),
                redis_url=self.proxies["broker"].url_for(self.redis.url),
                s3_url=self.proxies["storage"].url_for(s3_url),
                bucket=bucket,
                data_dir=workdir / "data",
                models_dir=models_dir,
                **FAULT_SETTINGS,
            )
        )
        self.workers: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None
        self.url = ""
        self.key = ""

    def start(self) -> FaultyStack:
        done = subprocess.run(
            [sys.executable, "-m", "lorabake.cli", "create-key", "--owner", "faults"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        self.key = done.stdout.strip()
        self.api, self.url = services.start_api(self.env, self.logs / "api.log")
        return self

    @property
    def client(self) -> Stack:
        return Stack(self.url, self.key, self.env)

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        proc = services.start_process(
            [sys.executable, "-m", "lorabake.cli", "worker"], self.env, self.logs / f"worker{n}.log"
        )
        self.workers.append(proc)
        return proc

    @staticmethod
    def kill_worker(proc: subprocess.Popen) -> None:
        """The whole worker host dies: kill -9 of its process group (main, pool child, duties)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def resume_record(self, s3_client, job_id: str) -> dict | None:  # noqa: ANN001 - a boto3 S3 client
        try:
            body = s3_client.get_object(Bucket=self.bucket, Key=f"jobs/{job_id}/state/latest.json")["Body"]
        except s3_client.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.api is not None:
            services.stop_process(self.api)
        for proxy in self.proxies.values():
            proxy.stop()
        self.redis.stop()
        for log in sorted(self.logs.iterdir()):  # shown by pytest only when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
