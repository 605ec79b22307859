"""FLUX.1 previews on the real stack (API and Celery worker processes, Postgres, Redis, an S3 server) with the
session's tiny FLUX.1 dev model: a FLUX job trained over HTTP, then a comparison whose weight-1 cell is the
training's own sample and a `<lora:NAME:1>` preview that is that sample too; an SD LoRA on the FLUX base is a
422 naming it."""

from __future__ import annotations

import httpx
import numpy as np
from PIL import Image

from tests.e2e.test_flux_e2e import FLUX_CONFIG
from tests.support.client import download, finished, submit, wait_for
from tests.support.datasets import kohya_entries, write_zip


def post(stack, path: str, body: dict) -> dict:  # noqa: ANN001
    response = httpx.post(f"{stack.url}{path}", headers=stack.headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def artifacts(stack, job_id: str) -> dict[str, dict]:  # noqa: ANN001
    listed = httpx.get(f"{stack.url}/v1/jobs/{job_id}/artifacts", headers=stack.headers).json()
    return {a["name"]: a for a in listed}


def pixels(stack, artifact: dict, tmp_path) -> np.ndarray:  # noqa: ANN001
    path = download(stack, artifact, tmp_path / f"{artifact['id']}.png")
    return np.asarray(Image.open(path).convert("RGB"))


def test_flux_comparison_and_preview_are_the_trainings_sample(stack, tmp_path):
    config = {**FLUX_CONFIG, "output_name": "fluxprev"}
    zip_path = write_zip(tmp_path / "flux.zip", kohya_entries(images=4, repeats=1, webp=False))
    trained = wait_for(stack, submit(stack, zip_path, config)["id"], finished)
    assert trained["status"] == "succeeded", trained["error"]
    sample = pixels(stack, artifacts(stack, trained["id"])["fluxprev_e000002_00.png"], tmp_path)

    comparison = post(stack, f"/v1/jobs/{trained['id']}/comparisons", {"weights": [0, 1], "epochs": [2]})
    assert comparison["config"]["family"] == "flux1"
    done = wait_for(stack, comparison["id"], finished)
    assert done["status"] == "succeeded", done["error"]
    cells = artifacts(stack, comparison["id"])
    assert "fluxprev_grid_p00.png" in cells
    assert np.array_equal(pixels(stack, cells["fluxprev_p00_e000002_w1_s2.png"], tmp_path), sample)
    base = pixels(stack, cells["fluxprev_p00_e000002_w0_s2.png"], tmp_path)
    assert np.abs(base.astype(int) - sample).max() > 0

    preview = post(
        stack,
        "/v1/generations",
        {"base_model": "tiny-flux", "prompt": "lisabp woman <lora:fluxprev:1> --w 64 --h 64 --d 2 --s 2"},
    )
    assert (preview["config"]["guidance_scale"], preview["config"]["t5xxl_max_token_length"]) == (3.5, 32)
    done = wait_for(stack, preview["id"], finished)
    assert done["status"] == "succeeded", done["error"]
    assert np.array_equal(pixels(stack, artifacts(stack, preview["id"])["preview-2.png"], tmp_path), sample)

    refused = httpx.post(
        f"{stack.url}/v1/generations",
        headers=stack.headers,
        json={"base_model": "tiny-sd15", "prompt": "x <lora:fluxprev>"},
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "lora_family_mismatch"
