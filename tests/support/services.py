"""Starting and reaching the real services the tests use: Postgres, Redis, an S3 server, our processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

PG_ADMIN_DSN = os.environ.get("LORABAKE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LORABAKE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def create_pg_database() -> tuple[str, str]:
    """A fresh database for this test session; returns (SQLAlchemy URL, name)."""
    name = f"lorabake_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_database(models_dir: Path | None = None) -> Iterator[str]:
    """A fresh, migrated database of its own (for a stack whose reconciler must see only its own jobs);
    with `models_dir`, its model catalogue holds those models, as if a worker had reported them."""
    from shared.db.migrate import upgrade
    from shared.db.session import get_engine

    url, name = create_pg_database()
    try:
        upgrade(url)
        if models_dir is not None:
            report_models(url, models_dir)
        yield url
    finally:
        get_engine(url).dispose()
        drop_pg_database(name)


def report_models(database_url: str, models_dir: Path, holder: str = "tests:models") -> None:
    """Writes the catalogue as a worker holding `models_dir` would (the real scan and record), for the
    API-only tests, which start no worker to report."""
    from shared.catalogue.records import record_models
    from shared.catalogue.scan import ModelScanner
    from shared.db.session import session_scope

    with session_scope(database_url) as session:
        record_models(session, holder, ModelScanner(models_dir).scan())


def start_api(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """`lorabake api` as a process of its own, once it answers ready; returns it and its URL."""
    port = free_port()
    proc = start_process([sys.executable, "-m", "lorabake.cli", "api", "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "API", proc)
    return proc, url


def check_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()


def start_s3_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url, timeout=1).status_code < 500, 30, "S3 server (moto)", proc)
    return proc, url


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=5)
