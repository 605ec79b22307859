"""A preview on the real stack (`lorabake api` + a one-slot `lorabake worker`): canceled mid-way through its
denoising, it ends `canceled` within seconds, not when its last step is drawn, and the worker it blocked
runs the next job. Its progress counts denoising steps, with an ETA, as training's counts its steps."""

from __future__ import annotations

import time

import httpx

from tests.support.client import Stack, finished, wait_for

CANCEL_BOUND = 20.0  # seconds, generous: a step at 128 px takes under a second on an idle 2-core box


def generate(stack: Stack, **body) -> dict:  # noqa: ANN003
    response = httpx.post(
        f"{stack.url}/v1/generations", headers=stack.headers, json={"base_model": "tiny-sd15", **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_a_preview_canceled_mid_way_ends_canceled_within_seconds_and_frees_the_worker(stack: Stack):
    # 150 steps at 128 px: minutes on the tiny model uncanceled, so only a cancel between steps is this quick
    slow = generate(stack, prompt="a red toy", steps=150, width=128, height=128, seed=1)
    assert slow["progress"]["total_steps"] == 150  # denoising steps, not images
    running = wait_for(stack, slow["id"], lambda j: j["progress"]["step"] >= 1 or finished(j), timeout=180)
    assert running["status"] == "rendering", running  # drawing, and not "training"
    assert running["progress"]["total_steps"] == 150 and running["progress"]["eta_seconds"] is not None
    waiting = generate(stack, prompt="a blue toy", steps=2, width=64, height=64, seed=2)  # behind it

    asked = time.monotonic()
    response = httpx.post(f"{stack.url}/v1/jobs/{slow['id']}/cancel", headers=stack.headers)
    assert response.status_code == 202, response.text
    ended = wait_for(stack, slow["id"], finished, timeout=120)
    took = time.monotonic() - asked
    assert ended["status"] == "canceled", ended
    assert took < CANCEL_BOUND, f"the cancel took {took:.1f}s"
    assert 0 < ended["progress"]["step"] < 150 and ended["artifacts"] == []

    done = wait_for(stack, waiting["id"], finished, timeout=180)  # the worker is free again
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 2
    assert [a["kind"] for a in done["artifacts"]] == ["image"]
