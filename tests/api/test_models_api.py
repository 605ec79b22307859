"""GET /v1/models, and jobs and plans for a base model no worker has refused before anything is stored; the
same for caption jobs and training jobs naming a captioner no worker has."""

from __future__ import annotations

import json
import uuid

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


# --- captioners: listed apart from base models, and a caption config naming one no worker has is refused ---

TINY_CAPTIONERS = {
    "tiny-blip": "blip",
    "tiny-wd14": "wd14",
    "tiny-florence2": "florence2",
    "tiny-qwen2.5-vl": "qwen_vl",
    "tiny-joycaption": "joycaption",
}


def stored_dataset(client: TestClient, headers: dict, tmp_path) -> str:  # noqa: ANN001
    zip_path = write_zip(tmp_path / "stored.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        created = client.post("/v1/datasets", headers=headers, files={"dataset": ("stored.zip", fh)})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_captioners_are_listed_apart_from_base_models(client, headers):
    body = client.get("/v1/models", headers=headers).json()
    captioners = {c["name"]: c for c in body["captioners"]}
    # the session's catalogue is the real scan of the tiny models folder (tests/support/services.py)
    assert {name: captioners[name]["method"] for name in TINY_CAPTIONERS} == TINY_CAPTIONERS
    assert (
        captioners["tiny-florence2"]["source"] == "local" and captioners["tiny-florence2"]["size_bytes"] > 0
    )
    assert not set(TINY_CAPTIONERS) & {m["name"] for m in body["items"]}
    assert "tiny-sd15" not in captioners


def test_a_captioner_no_worker_has_is_refused_with_its_hf_download_command(
    client, headers, tmp_path, models_dir, s3_server, bucket
):
    dataset_id = stored_dataset(client, headers, tmp_path)
    stored = bucket_keys(s3_server, bucket)
    url = f"/v1/datasets/{dataset_id}/caption"
    repo = "fancyfeast/llama-joycaption-beta-one-hf-llava"  # the default JoyCaption: not in the models folder
    command = (
        f"hf download {repo} --include '*.json' --include '*.jinja' --include '*.txt' --include '*.model' "
        f"--include '*.safetensors' --local-dir {models_dir / repo}"
    )
    refused = client.post(url, headers=headers, json={"method": "joycaption"})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("unknown_caption_model", "joycaption_model")
    assert error["details"]["download_command"] == command and command in error["message"]
    assert "'tiny-joycaption'" in error["message"]  # the JoyCaption models the workers do have

    # `auto` chose Florence-2's default for FLUX.1: the refusal names the model field and what chose it
    auto = client.post(url, headers=headers, json={"method": "auto", "model_family": "flux1"})
    assert auto.status_code == 422, auto.text
    assert auto.json()["error"]["details"]["field"] == "florence2_model"
    assert "method 'auto'" in auto.json()["error"]["message"]
    assert "hf download florence-community/Florence-2-large" in auto.json()["error"]["message"]

    # a captioner of another kind than the method is refused too (the worker would not load it)
    other = client.post(url, headers=headers, json={"method": "qwen_vl", "qwen_vl_model": "tiny-joycaption"})
    assert other.status_code == 422 and "is a JoyCaption model, not a Qwen-VL one" in other.text

    # a training job that captions first: the field is the config's
    training = submit(
        client, headers, tmp_path, {"base_model": "tiny-sd15", "captioning": {"method": "wd14"}}
    )
    assert training.status_code == 422, training.text
    assert training.json()["error"]["details"]["field"] == "config.captioning.wd14_model"
    assert "hf download SmilingWolf/wd-v1-4-convnext-tagger-v2 --include model.onnx" in training.text
    assert client.get("/v1/jobs", headers=headers).json()["items"] == []
    assert bucket_keys(s3_server, bucket) == stored


def test_a_captioner_is_accepted_once_a_worker_reported_it(client, env, headers, tmp_path, pg_url):
    from shared.catalogue.records import record_models
    from shared.catalogue.scan import ModelEntry
    from shared.db.session import session_scope

    dataset_id = stored_dataset(client, headers, tmp_path)
    url = f"/v1/datasets/{dataset_id}/caption"
    repo = f"someone/joycaption-{uuid.uuid4().hex[:8]}"  # of this test alone: the catalogue is the session's
    tagger = f"SmilingWolf/tagger-{uuid.uuid4().hex[:8]}"
    bodies = [
        {"method": "joycaption", "joycaption_model": repo},
        {"method": "wd14", "wd14_model": tagger},  # reported as Kohya's folder, models/SmilingWolf_tagger-...
    ]
    assert [client.post(url, headers=headers, json=b).status_code for b in bodies] == [422, 422]
    holder = f"tests:captioners-{uuid.uuid4().hex[:8]}"
    entries = [  # as a worker's scan reports them
        ModelEntry(repo, None, None, "captioner", "hub_cache", 1000, captioner="joycaption"),
        ModelEntry(tagger.replace("/", "_"), None, None, "captioner", "local", 1000, captioner="wd14"),
    ]
    try:
        with session_scope(pg_url) as session:
            record_models(session, holder, entries)
        for body in bodies:
            accepted = client.post(url, headers=headers, json=body)
            assert accepted.status_code == 201, accepted.text
            assert accepted.json()["config"]["method"] == body["method"]
        listed = {
            c["name"]: c["method"] for c in client.get("/v1/models", headers=headers).json()["captioners"]
        }
        assert listed[repo] == "joycaption"
    finally:
        with session_scope(pg_url) as session:
            record_models(session, holder, [])  # the last holder no longer has them: gone from the catalogue
    # a hub id no worker has is taken where workers may download models
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_ALLOW_MODEL_DOWNLOADS": "1"}))) as client:
        assert client.post(url, headers=headers, json=bodies[0]).status_code == 201
        named = client.post(url, headers=headers, json={"method": "florence2", "florence2_model": "no-such"})
        assert named.status_code == 422  # not a hub id: nothing to download
