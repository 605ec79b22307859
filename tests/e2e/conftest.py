"""The production-shaped stack for end-to-end tests, started once per session: `lorabake api` and
`lorabake worker` processes on Postgres, Redis and an S3 server, a key made with `lorabake create-key`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.support import services
from tests.support.client import Stack
from tests.support.stack import process_env, stack_env


def lorabake(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lorabake.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="session")
def stack_db() -> Iterator[str]:
    """A database of the stack's own: its reconciler must see only the jobs it was given."""
    with services.migrated_database() as url:
        yield url


def models_listed(url: str, key: str) -> bool:
    """The worker reported its models (the stack's database starts with an empty catalogue)."""
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["items"]
    return "tiny-sd15" in {m["name"] for m in listed}


@pytest.fixture(scope="session")
def stack(stack_db, redis_url, s3_server, models_dir, tmp_path_factory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    bucket = "e2e-lorabake"
    s3_server.client().create_bucket(Bucket=bucket)
    env = process_env(
        stack_env(
            pg_url=stack_db,
            redis_url=redis_url,
            s3_url=s3_server.url,
            bucket=bucket,
            data_dir=tmp_path_factory.mktemp("data"),
            models_dir=models_dir,
            # the worker's own metrics port (test_metrics_e2e.py scrapes it)
            worker_metrics_port=str(services.free_port()),
            worker_metrics_host="127.0.0.1",
            # webhooks to the tests' own receivers (test_webhooks_e2e.py), retried within seconds
            allow_private_urls="1",
            webhook_retry_schedule="0.5,1,1,2,2,3,5,5",
            webhook_progress_seconds="2",
        )
    )
    key = lorabake("create-key", "--owner", "e2e", env=env)
    worker = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "worker"], env, logs / "worker.log"
    )
    api = None
    try:
        api, url = services.start_api(env, logs / "api.log")
        services.wait_until(lambda: models_listed(url, key), 60, "the worker's report of its models", worker)
        yield Stack(url, key, env)
    finally:
        if api is not None:
            services.stop_process(api)
        services.stop_process(worker)
        for log in logs.iterdir():  # shown by pytest only when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@contextmanager
def api_alone(name: str, *, redis_url: str, s3_server, models_dir, tmp_path_factory) -> Iterator[Stack]:  # noqa: ANN001
    """`lorabake api` with no worker, on a database and bucket of its own, and a key for it."""
    from shared.db.keys import create_api_key
    from shared.db.session import session_scope

    bucket = f"{name}-lorabake"
    s3_server.client().create_bucket(Bucket=bucket)
    with services.migrated_database(models_dir) as db_url:
        env = process_env(
            stack_env(
                pg_url=db_url,
                redis_url=redis_url,
                s3_url=s3_server.url,
                bucket=bucket,
                data_dir=tmp_path_factory.mktemp(f"{name}-data"),
                models_dir=models_dir,
            )
        )
        with session_scope(db_url) as session:
            key = create_api_key(session, owner=name)
        log = tmp_path_factory.mktemp(f"{name}-logs") / "api.log"
        proc, url = services.start_api(env, log)
        try:
            yield Stack(url, key, env)
        finally:
            services.stop_process(proc)
            print(log.read_text(errors="replace")[-3000:])  # shown by pytest only when a test failed
