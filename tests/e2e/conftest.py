"""The production-shaped stack for end-to-end tests, started once per session: `lorabake api` and
`lorabake worker` processes on Postgres, Redis and an S3 server, a key made with `lorabake create-key`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

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
    from shared.db import get_engine
    from shared.migrate import upgrade

    url, name = services.create_pg_database()
    upgrade(url)
    yield url
    get_engine.cache_clear()
    services.drop_pg_database(name)


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
        )
    )
    key = lorabake("create-key", "--owner", "e2e", env=env)
    port = services.free_port()
    worker = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "worker"], env, logs / "worker.log"
    )
    api = services.start_process(
        [sys.executable, "-m", "lorabake.cli", "api", "--port", str(port)], env, logs / "api.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "API", api)
        yield Stack(url, key, env)
    finally:
        services.stop_process(api)
        services.stop_process(worker)
        for log in logs.iterdir():  # shown by pytest only when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
