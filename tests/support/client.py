"""Talking to a running lorabake over HTTP the way a client does: submit, poll, download."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Stack:
    url: str
    key: str
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def submit(stack: Stack, zip_path: Path, config: dict) -> dict:
    with open(zip_path, "rb") as fh:
        response = httpx.post(
            f"{stack.url}/v1/jobs",
            headers=stack.headers,
            timeout=60,
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps(config)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(stack: Stack, job_id: str, done: Callable[[dict], bool], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.headers)
        if response.status_code == 503:  # a server just came back: the documented answer, so poll again
            time.sleep(0.3)
            continue
        assert response.status_code == 200, response.text
        job = response.json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def download(stack: Stack, artifact: dict, dest: Path) -> Path:
    response = httpx.get(
        stack.url + artifact["download_url"], headers=stack.headers, follow_redirects=True, timeout=60
    )
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest
