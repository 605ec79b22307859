"""fp8_base / base_quantization through the API: choices that cannot run together are a 422 naming the field
before anything is stored, and the plan's VRAM estimate counts the base weights at the chosen precision."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.test_queue_api import key_with
from tests.support.stack import settings_from_env

COUNTS = {"subsets": [{"folder": "img/2_a b", "images": 3}]}


def _fields(response) -> list[str]:
    details = response.json()["error"]["details"]
    return [f["field"] for f in details.get("fields", [])] or [details.get("field")]


def test_conflicting_base_weight_choices_are_422s_and_the_plan_counts_the_precision(env, pg_url):
    headers = key_with(pg_url)
    base = {"base_model": "tiny-sd15", "resolution": 512, "epochs": 1}
    with TestClient(create_app(settings_from_env(env))) as client:

        def plan(**fields):
            return client.post(
                "/v1/plan", headers=headers, json={"config": {**base, **fields}, "counts": COUNTS}
            )

        conflict = plan(fp8_base=True, base_quantization="int8")
        assert conflict.status_code == 422 and _fields(conflict) == ["config.base_quantization"], (
            conflict.text
        )
        lycoris = plan(fp8_base=True, network_type="loha")
        assert lycoris.status_code == 422 and _fields(lycoris) == ["config.fp8_base"], lycoris.text
        unknown = plan(base_quantization="int4")
        assert unknown.status_code == 422 and _fields(unknown) == ["config.base_quantization"], unknown.text

        parts = {}
        for name, fields in {"none": {}, "int8": {"base_quantization": "int8"}}.items():
            response = plan(mixed_precision="bf16", **fields)
            assert response.status_code == 200, response.text
            parts[name] = {p["name"]: p["bytes"] for p in response.json()["vram"]["parts"]}
        assert parts["int8"]["denoiser weights"] < parts["none"]["denoiser weights"]
        assert parts["int8"]["CLIP-L weights"] == parts["none"]["CLIP-L weights"]
