"""Modest concurrency against one `lorabake api` process on Postgres, Redis and an S3 server: 200 clients
polling a job at once and 100 uploading a 2 MB dataset at once get answers, every one of them (bounded
loops on loopback; no timing is asserted, the figures are printed)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import api_alone
from tests.support.client import Stack

CONFIG = '{"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1}'


@pytest.fixture(scope="module")
def api(redis_url, s3_server, models_dir, tmp_path_factory) -> Iterator[Stack]:
    with api_alone(
        "load",
        redis_url=redis_url,
        s3_server=s3_server,
        models_dir=models_dir,
        tmp_path_factory=tmp_path_factory,
    ) as stack:
        yield stack
    import redis

    redis.Redis.from_url(redis_url).delete(stack.env["LORABAKE_QUEUE_NAME"])


def two_megabyte_zip() -> bytes:
    """Three 512x512 noise PNGs (they do not compress): about 2.3 MB."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(3):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(png, format="PNG")
            archive.writestr(f"img/2_lisabp woman/{i}.png", png.getvalue())
    return buffer.getvalue()


async def hammer(requests: list, concurrency: int) -> tuple[Counter, float]:
    """Runs the request coroutines, `concurrency` at a time; counts status codes (0: no answer)."""
    codes: Counter = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(make) -> None:  # noqa: ANN001
        async with gate:
            try:
                response = await make()
                codes[response.status_code] += 1
            except httpx.HTTPError as exc:
                codes[f"{type(exc).__name__}"] += 1

    started = time.monotonic()
    await asyncio.gather(*(one(make) for make in requests))
    return codes, time.monotonic() - started


def client(stack: Stack, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=stack.url, headers=stack.headers, limits=limits, timeout=180)


def test_a_hundred_concurrent_2mb_uploads_and_200_concurrent_polls_all_get_answers(api):
    body = two_megabyte_zip()
    assert len(body) > 2_000_000

    async def run() -> tuple[Counter, float, Counter, float, list[str]]:
        async with client(api, 100) as http:

            def upload():  # noqa: ANN202
                return http.post("/v1/jobs", files={"dataset": ("set.zip", body)}, data={"config": CONFIG})

            upload_codes, upload_seconds = await hammer([upload for _ in range(100)], 100)
            listed = (await http.get("/v1/jobs?limit=100")).json()["items"]
        job_ids = [j["id"] for j in listed]
        async with client(api, 200) as http:
            polls = [lambda job_id=job_id: http.get(f"/v1/jobs/{job_id}") for job_id in job_ids * 10]
            poll_codes, poll_seconds = await hammer(polls, 200)
        return upload_codes, upload_seconds, poll_codes, poll_seconds, job_ids

    upload_codes, upload_seconds, poll_codes, poll_seconds, job_ids = asyncio.run(run())
    print(
        f"\n[load] 100 concurrent 2.3 MB uploads: {dict(upload_codes)} in {upload_seconds:.1f}s; "
        f"1000 GET /v1/jobs/{{id}} 200 at a time: {dict(poll_codes)} in {poll_seconds:.1f}s "
        f"({1000 / poll_seconds:.0f} req/s)"
    )
    assert upload_codes == Counter({201: 100})
    assert len(job_ids) == 100
    assert poll_codes == Counter({200: 1000})
