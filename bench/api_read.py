"""API read path: `GET /v1/jobs/{id}` of `lorabake api` (key check, a Postgres read, the JobOut JSON) against
bare FastAPI handler that returns the same JSON from memory, one uvicorn worker each, side by side in one
run, loaded by wrk on loopback (Debian's `wrk` package), and a third server, the floor: the bare handler
plus the one Postgres read of the job's row that any real answer needs. Rounds alternate between them; the
medians of requests/s and p99 latency are compared. Goal: lorabake/bare >= 0.6 in requests/s, p99 <= 2x.

Beside those, the poll of a queued job (its place in line and expected start included, among other queued
jobs, one worker alive) against the same job's twin that was canceled (identical row but its status): the
queue's table is computed once per change of the queue, not per poll. Goal: queued/canceled >= 0.8 in
requests/s, p99 <= 2x.

    .venv/bin/python bench/api_read.py [--rounds 3] [--seconds 10] [--connections 32]
    .venv/bin/python bench/api_read.py --profile   # py-spy samples of lorabake's side under the same load

Needs the machine's Postgres (LORABAKE_TEST_PG_ADMIN, as the tests) and Redis; uses a database of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import services  # noqa: E402  (the same Postgres/Redis helpers the tests use)

BARE_APP = textwrap.dedent(
    """
    import json, os
    from fastapi import FastAPI
    body = json.loads(os.environ["BENCH_JOB_JSON"])
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict:
        return body
    """
)
# The bare handler plus the least a real answer needs: one read of the job's row from Postgres (async
# psycopg pool, autocommit), no key check, no middleware. What no implementation of the route can beat.
FLOOR_APP = textwrap.dedent(
    """
    import os
    from contextlib import asynccontextmanager
    from fastapi import FastAPI, Response
    from psycopg_pool import AsyncConnectionPool
    body = os.environ["BENCH_JOB_JSON"].encode()
    pool = AsyncConnectionPool(os.environ["BENCH_DSN"], min_size=1, max_size=8, kwargs={"autocommit": True},
                               open=False)

    @asynccontextmanager
    async def lifespan(app):
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT owner, updated_at FROM jobs WHERE id = %s", (job_id,))
            await cursor.fetchone()
        return Response(body, media_type="application/json")
    """
)


QUEUE = "bench-api-read"


def seed_queue(db_url: str) -> tuple[str, str]:
    """Five queued jobs of the bench's owner in the bench's queue, each with a predicted run time, and the
    canceled twin of the last one; returns (last queued id, twin id)."""
    from shared.db.models import Job, JobStatus, new_id
    from shared.db.session import session_scope

    fields = dict(
        owner="bench",
        queue=QUEUE,
        config={"base_model": "sd15", "network_dim": 32},
        plan={"total_steps": 816, "estimate": {"seconds": 600.0}},
        dataset_key="k",
        total_steps=816,
        total_epochs=4,
        estimated_seconds=600.0,
    )
    with session_scope(db_url) as session:
        queued = [Job(id=new_id(), status=JobStatus.queued, **fields) for _ in range(5)]
        twin = Job(id=new_id(), status=JobStatus.canceled, **fields)
        session.add_all([*queued, twin])
        return queued[-1].id, twin.id


def keep_a_worker_alive(db_url: str, stop: threading.Event) -> None:
    """One live worker with one slot serving the bench's queue, so expected starts are computed."""
    from shared.db.session import session_scope
    from shared.jobs.workers import record_heartbeat

    while not stop.is_set():
        with session_scope(db_url) as session:
            record_heartbeat(session, "bench-worker:1", QUEUE, 1)
        stop.wait(5)


def seed(db_url: str) -> tuple[str, str]:
    """An API key and a finished job with the files a 4-epoch run leaves (4 LoRAs, 4 samples)."""
    from shared.db.keys import create_api_key
    from shared.db.models import Artifact, Job, JobStatus, new_id
    from shared.db.session import session_scope

    with session_scope(db_url) as session:
        key = create_api_key(session, owner="bench")
        job = Job(
            id=new_id(),
            owner="bench",
            status=JobStatus.succeeded,
            config={"base_model": "sd15"},
            plan={"total_steps": 816},
            dataset_key="k",
            total_steps=816,
            step=816,
            epoch=4,
            total_epochs=4,
        )
        session.add(job)
        session.flush()
        for epoch in range(1, 5):
            for kind, name in (
                ("lora", f"lisa-{epoch:06d}.safetensors"),
                ("sample", f"lisa_e{epoch:06d}_00.png"),
            ):
                session.add(
                    Artifact(
                        job_id=job.id,
                        kind=kind,
                        name=name,
                        epoch=epoch,
                        step=204 * epoch,
                        object_key=f"jobs/{job.id}/artifacts/x/{name}",
                        size_bytes=1 << 20,
                        sha256="0" * 64,
                        meta={"prompt": "lisabp"} if kind == "sample" else None,
                    )
                )
        return key, job.id


def serve(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = services.start_process(args, env, log)
    services.wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200,
        60,
        " ".join(args[-3:]),
        proc,
    )
    return proc


def wrk(url: str, key: str, seconds: int, connections: int) -> tuple[float, float]:
    """(requests/s, p99 ms); any non-2xx answer or socket error makes the run invalid."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {key}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def profile(pid: int, load, seconds: int, work: Path, top: int = 45) -> str:  # noqa: ANN001 - load: () -> None
    """py-spy samples of the server while `load` runs: the functions holding the most samples (own frames of
    lorabake, FastAPI, Starlette, SQLAlchemy, pydantic...), inclusive of what they call."""
    out = work / "profile.txt"
    command = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--format",
        "raw",
        "--nonblocking",
        "--gil",
    ]
    spy = subprocess.Popen([*command, "--duration", str(seconds), "-o", str(out)], stdout=subprocess.DEVNULL)
    load()
    spy.wait(timeout=seconds + 30)
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    rows = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{100 * n / total:5.1f}%  {frame}" for frame, n in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()

    from shared.db.migrate import upgrade

    db_url, db_name = services.create_pg_database()
    upgrade(db_url)
    key, job_id = seed(db_url)
    queued_id, twin_id = seed_queue(db_url)
    beating = threading.Event()
    threading.Thread(target=keep_a_worker_alive, args=(db_url, beating), daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = {
        **os.environ,
        "LORABAKE_DATA_DIR": str(work),
        "LORABAKE_DATABASE_URL": db_url,
        "LORABAKE_BROKER_URL": services.REDIS_URL,
        "LORABAKE_QUEUE_NAME": QUEUE,
    }
    lb_port = services.free_port()
    lorabake = serve(
        [sys.executable, "-m", "lorabake.cli", "api", "--port", str(lb_port)],
        env,
        lb_port,
        work / "lorabake.log",
    )
    urls = {"lorabake": f"http://127.0.0.1:{lb_port}/v1/jobs/{job_id}"}
    body = httpx.get(urls["lorabake"], headers={"Authorization": f"Bearer {key}"}).text
    urls["queued"] = f"http://127.0.0.1:{lb_port}/v1/jobs/{queued_id}"
    urls["canceled"] = f"http://127.0.0.1:{lb_port}/v1/jobs/{twin_id}"
    standing = httpx.get(urls["queued"], headers={"Authorization": f"Bearer {key}"}).json()
    assert standing["queue_position"] >= 1 and standing["estimated_start_seconds"] is not None, standing
    servers = [lorabake]
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        for side, source in (("bare", BARE_APP), ("floor", FLOOR_APP)):
            (work / f"{side}_app.py").write_text(source)
            port = services.free_port()
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(work),
                f"{side}_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            servers.append(
                serve(command, {**env, "BENCH_JOB_JSON": body, "BENCH_DSN": dsn}, port, work / f"{side}.log")
            )
            urls[side] = f"http://127.0.0.1:{port}/v1/jobs/{job_id}"
            assert httpx.get(urls[side]).json() == json.loads(body), f"{side} must return the same JSON"
        for url in urls.values():
            wrk(url, key, 2, opts.connections)  # warm-up
        if opts.profile:
            load = lambda: wrk(urls["lorabake"], key, opts.seconds + 2, opts.connections)  # noqa: E731
            print(profile(lorabake.pid, load, opts.seconds, work))
            return
        results: dict[str, list[tuple[float, float]]] = {side: [] for side in urls}
        for _ in range(opts.rounds):
            for side, url in urls.items():
                results[side].append(wrk(url, key, opts.seconds, opts.connections))
    finally:
        beating.set()
        for server in servers:
            services.stop_process(server)
        from shared.db.session import get_engine

        get_engine(db_url).dispose()
        services.drop_pg_database(db_name)
    med = {
        side: (statistics.median(r for r, _ in rs), statistics.median(p for _, p in rs))
        for side, rs in results.items()
    }
    for side, rs in results.items():
        rounds = ", ".join(f"{r:.0f} req/s p99 {p:.1f} ms" for r, p in rs)
        print(f"{side:9s} median {med[side][0]:.0f} req/s, p99 {med[side][1]:.1f} ms  ({rounds})")
    for a, b, goal in (
        ("lorabake", "bare", " (goal >= 0.6, p99 <= 2x)"),
        ("floor", "bare", ""),
        ("lorabake", "floor", ""),
        ("queued", "canceled", " (goal >= 0.8, p99 <= 2x)"),
    ):
        print(
            f"ratio {a}/{b}: requests/s {med[a][0] / med[b][0]:.2f}, p99 {med[a][1] / med[b][1]:.2f}x{goal}"
        )
    print(f"{opts.connections} connections, {opts.seconds}s x {opts.rounds} rounds, {len(body)} byte JSON")


if __name__ == "__main__":
    main()
