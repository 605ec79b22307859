"""GET /v1/models, and jobs and plans for a base model no worker has refused before anything is stored."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env

COUNTS = {"subsets": [{"folder": "img/5_lisa woman", "images": 10}]}


def test_the_catalogue_lists_what_a_worker_has_by_the_name_base_model_takes(client, headers, models_dir):
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    models = {m["name"]: m for m in body["items"]}
    assert body["downloads_allowed"] is False
    folder, single = models["tiny-sd15"], models["tiny-sd15-single.safetensors"]
    assert (folder["family"], folder["kind"], folder["source"]) == ("sd1", "diffusers", "local")
    assert folder["prediction_type"] == "epsilon"
    on_disk = sum(p.stat().st_size for p in (models_dir / "tiny-sd15").rglob("*") if p.is_file())
    assert folder["size_bytes"] == on_disk
    assert (single["family"], single["kind"]) == ("sd1", "single_file")
    assert single["size_bytes"] == (models_dir / "tiny-sd15-single.safetensors").stat().st_size
    assert single["prediction_type"] == "epsilon"  # from the shared configs/sd15 folder
    # captioners and the single files' config folder are not base models
    assert not {"tiny-blip", "tiny-wd14", "configs", "configs/sd15"} & set(models)
    assert str(models_dir) not in response.text


def test_the_catalogue_needs_a_key(client):
    assert client.get("/v1/models").status_code == 401


def submit(client: TestClient, headers: dict, tmp_path, config: dict):  # noqa: ANN201
    zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("set.zip", fh, "application/zip")},
            data={"config": json.dumps(config)},
        )


def test_an_unknown_base_model_is_refused_with_close_names_and_nothing_stored(
    client, headers, tmp_path, s3_server, bucket
):
    response = submit(client, headers, tmp_path, {"base_model": "tiny-sd16"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unknown_base_model"
    assert error["details"]["field"] == "config.base_model"
    assert "tiny-sd15" in error["details"]["close_matches"]
    assert "tiny-sd15" in error["message"]
    assert client.get("/v1/jobs", headers=headers).json()["items"] == []
    assert bucket_keys(s3_server, bucket) == []

    planned = client.post(
        "/v1/plan", headers=headers, json={"config": {"base_model": "tiny-sd16"}, "counts": COUNTS}
    )
    assert planned.status_code == 422 and planned.json()["error"]["code"] == "unknown_base_model"


@pytest.mark.parametrize(
    "name", ["../tiny-sd15", "tiny-sd15/../../etc", "/etc/passwd", "~/models/x", "C:\\models\\x.safetensors"]
)
def test_path_like_base_models_are_refused_without_showing_a_server_path(client, headers, models_dir, name):
    response = client.post(
        "/v1/plan", headers=headers, json={"config": {"base_model": name}, "counts": COUNTS}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_base_model", "config.base_model")
    assert str(models_dir) not in response.text


def test_a_listed_model_and_with_downloads_allowed_a_hub_id_are_accepted(env, headers):
    planned = {"counts": COUNTS}
    with TestClient(create_app(settings_from_env(env))) as client:
        ok = client.post("/v1/plan", headers=headers, json={**planned, "config": {"base_model": "tiny-sd15"}})
        assert ok.status_code == 200, ok.text
        hub = client.post(
            "/v1/plan", headers=headers, json={**planned, "config": {"base_model": "org/model"}}
        )
        assert hub.status_code == 422  # not in the cache, and downloads are off
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_ALLOW_MODEL_DOWNLOADS": "1"}))) as client:
        hub = client.post(
            "/v1/plan", headers=headers, json={**planned, "config": {"base_model": "org/model"}}
        )
        assert hub.status_code == 200, hub.text
        assert client.get("/v1/models", headers=headers).json()["downloads_allowed"] is True
        not_hub = client.post(
            "/v1/plan", headers=headers, json={**planned, "config": {"base_model": "nothing-here"}}
        )
        assert not_hub.status_code == 422


def test_a_single_file_may_be_named_by_its_stem(client, headers):
    """Users name the model they downloaded ("flux1-dev" for flux1-dev.safetensors): the plan and the job
    take the stem and record the catalogue's full name, so the worker and the family checks find it."""
    body = {
        "config": {"base_model": "tiny-sd15-single", "resolution": 64, "min_bucket_reso": 64},
        "counts": COUNTS,
    }
    response = client.post("/v1/plan", headers=headers, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["config"]["base_model"] == "tiny-sd15-single.safetensors"
    assert response.json()["family"] == "sd1"
    unknown = client.post("/v1/plan", headers=headers, json={**body, "config": {"base_model": "tiny-sd1"}})
    assert unknown.status_code == 422  # a stem of nothing listed is still refused
