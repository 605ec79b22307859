"""/v1/plan (dry run), /v1/configs/kohya and /v1/configs/sd-scripts against real Postgres, Redis
and an S3 server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.keys import create_api_key
from shared.db.models import Job
from shared.db.session import session_scope
from tests.support.datasets import flat_entries, kohya_entries, write_zip
from tests.support.kohya_configs import flux_preset_config, guide_character_config
from tests.support.sd_scripts_configs import (
    DATASET_TOML,
    FLUX_DATASET_TOML,
    FLUX_DOCS_TOML,
    SD15_LORA_TOML,
    SDXL_LOCON_TOML,
)
from tests.support.stack import bucket_keys

LISA = {"subsets": [{"folder": "img/6_lisabp woman", "images": 34}]}


def job_count(pg_url: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def upload(client: TestClient, headers: dict, zip_path: Path, options: dict | None = None) -> dict:
    with open(zip_path, "rb") as fh:
        data = {"options": json.dumps(options)} if options else {}
        response = client.post(
            "/v1/datasets", headers=headers, files={"dataset": (zip_path.name, fh)}, data=data
        )
    assert response.status_code == 201, response.text
    return response.json()


def fields(response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["details"]["fields"]]


def test_counts_dry_run_is_the_guides_example_and_stores_nothing(client, headers, pg_url, s3_server, bucket):
    jobs_before = job_count(pg_url)
    body = {"config": {"base_model": "tiny-sd15", "preset": "character", "output_name": "lisabp"}}
    response = client.post("/v1/plan", headers=headers, json={**body, "counts": LISA})
    assert response.status_code == 200, response.text
    out = response.json()
    assert (out["source"], out["layout"]) == ("counts", "kohya")
    plan = out["plan"]
    assert (plan["images"], plan["repeats"], plan["steps_per_epoch"]) == (34, 6, 204)
    assert (plan["epochs"], plan["total_steps"]) == (10, 2040)
    estimate = out["estimate"]  # the run time, stored with the job as plan.estimate
    assert estimate == plan["estimate"] and estimate["family"] == "sd1" and estimate["captioning"] is None
    assert estimate["training"]["basis"]["source"] in ("history", "default")  # whatever ran before here
    assert estimate["seconds"] > estimate["training"]["overhead_seconds"] > 0
    assert plan["subsets"] == [
        {
            "folder": "img/6_lisabp woman",
            "is_reg": False,
            "trigger": "lisabp",
            "class_token": "woman",
            "images": 34,
            "repeats": 6,
            "samples_per_epoch": 204,
        }
    ]
    assert plan["buckets"] == []  # no sizes given
    assert out["config"]["preset"] == "character" and out["config"]["network_dim"] == 128
    assert out["config"]["epochs"] == 10 and out["config"]["save_precision"] == "fp16"
    files = [(c["file"], c["step"]) for c in out["checkpoints"]]
    assert files[0] == ("lisabp-000001.safetensors", 204) and files[-1] == ("lisabp.safetensors", 2040)
    assert len(files) == out["checkpoint_count"] == 10
    # mixed_precision defaults to auto (the worker picks), so no GPU warning: the guide's plan is clean
    assert [w["code"] for w in out["warnings"]] == [] == [w["code"] for w in plan["warnings"]]
    assert out["config"]["mixed_precision"] == "auto"
    assert job_count(pg_url) == jobs_before and bucket_keys(s3_server, bucket) == []


def test_counts_with_sizes_reg_and_a_flat_folder(client, headers):
    config = {"base_model": "tiny-sd15", "epochs": 2, "batch_size": 4, "mixed_precision": "fp16"}
    counts = {
        "subsets": [
            {"folder": "img/3_zkz dog", "images": 4, "sizes": [{"width": 512, "height": 512, "count": 3},
                                                             {"width": 1024, "height": 512, "count": 1}]},
            {"folder": "reg/1_dog", "images": 12, "is_reg": True, "sizes": [{"width": 512, "height": 512,
                                                                             "count": 12}]},
        ]
    }  # fmt: skip
    out = client.post("/v1/plan", headers=headers, json={"config": config, "counts": counts}).json()
    plan = out["plan"]
    assert plan["reg_images"] == 12 and plan["samples_per_epoch"] == 24  # reg matched to 4 x 3
    assert {(b["width"], b["height"]) for b in plan["buckets"]} >= {(512, 512)}
    assert "batch_exceeds_bucket" in {
        w["code"] for w in out["warnings"]
    }  # the wide image's bucket: 3 samples

    flat = client.post(
        "/v1/plan",
        headers=headers,
        json={
            "config": {"base_model": "tiny-sd15", "preset": "style"},
            "counts": {"subsets": [{"images": 20}]},
        },
    ).json()
    assert (
        flat["layout"] == "flat" and flat["config"]["repeats"] == 10 and flat["config"]["network_dim"] == 256
    )
    assert flat["plan"]["steps_per_epoch"] == 200 and flat["plan"]["total_steps"] == 2000


def test_dataset_dry_run_matches_the_job_it_would_queue(client, headers, pg_url, s3_server, bucket, tmp_path):
    dataset = upload(client, headers, write_zip(tmp_path / "d.zip", kohya_entries(images=4, repeats=3)))
    stored = set(bucket_keys(s3_server, bucket))
    jobs_before = job_count(pg_url)
    config = {"base_model": "tiny-sd15", "preset": "concept", "resolution": 64, "min_bucket_reso": 64}
    dry = client.post("/v1/plan", headers=headers, json={"config": config, "dataset_id": dataset["id"]})
    assert dry.status_code == 200, dry.text
    out = dry.json()
    assert out["source"] == "dataset" and out["plan"]["repeats"] == 3
    assert out["plan"]["buckets"]  # a stored dataset knows its image sizes
    assert "webp_images" in {w["code"] for w in out["warnings"]}  # from the stored intake report
    assert job_count(pg_url) == jobs_before and set(bucket_keys(s3_server, bucket)) == stored

    job = client.post("/v1/jobs", headers=headers, json={"config": config, "dataset_id": dataset["id"]})
    assert job.status_code == 201, job.text
    assert job.json()["plan"] == out["plan"] and job.json()["config"] == out["config"]


def test_job_upload_applies_the_preset_and_stores_warnings(client, headers, tmp_path):
    zip_path = write_zip(tmp_path / "flat.zip", flat_entries(images=3))
    config = {"base_model": "tiny-sd15", "preset": "character", "trigger_word": "zkz"}
    with open(zip_path, "rb") as fh:
        response = client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("flat.zip", fh, "application/zip")},
            data={"config": json.dumps(config)},
        )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["config"]["repeats"] == 67 and job["config"]["network_dim"] == 128  # 3 x 67 = 201 per epoch
    assert (
        job["plan"]["steps_per_epoch"] == 201 and job["plan"]["total_steps"] == 201 * job["config"]["epochs"]
    )
    assert job["progress"]["total_steps"] == job["plan"]["total_steps"]
    assert {w["code"] for w in job["plan"]["warnings"]} == set()  # precision auto: no bf16 GPU warning


def test_422s_name_the_field_and_store_nothing(
    client, headers, pg_url, tmp_path, s3_server, bucket, sdxl_model
):
    jobs_before = job_count(pg_url)
    base = {"base_model": "tiny-sd15"}

    def post(body):
        return client.post("/v1/plan", headers=headers, json=body)

    bad_config = post({"config": {**base, "epochs": 0, "preset": "anime"}, "counts": LISA})
    assert bad_config.status_code == 422 and set(fields(bad_config)) == {"config.epochs", "config.preset"}
    bad_counts = post({"config": base, "counts": {"subsets": [{"folder": "img/2_a b", "images": 0}]}})
    assert bad_counts.status_code == 422 and fields(bad_counts) == ["counts.subsets.0.images"]
    no_repeats = post({"config": base, "counts": {"subsets": [{"folder": "a", "images": 2}, {"images": 3}]}})
    assert fields(no_repeats) == ["counts.subsets.0.repeats"]
    flat_repeats = post({"config": base, "counts": {"subsets": [{"images": 3, "repeats": 4}]}})
    assert fields(flat_repeats) == ["counts.subsets.0.repeats"]
    mismatch = post(
        {"config": base, "counts": {"subsets": [{"folder": "img/2_a", "images": 3, "repeats": 4}]}}
    )
    assert fields(mismatch) == ["counts.subsets.0.repeats"]
    two_sizes = [{"width": 9, "height": 9, "count": 2}]
    sizes = post({"config": base, "counts": {"subsets": [{"images": 3, "sizes": two_sizes}]}})
    assert fields(sizes) == ["counts.subsets.0.sizes"]
    neither = post({"config": base})
    assert neither.status_code == 422 and fields(neither) == ["dataset_id"]
    both = post({"config": base, "counts": LISA, "dataset_id": "x"})
    assert fields(both) == ["dataset_id"]
    unknown = post({"config": base, "dataset_id": "nope"})
    assert unknown.json()["error"]["code"] == "unknown_dataset" and fields(unknown) == ["dataset_id"]
    extra = post({"config": base, "counts": LISA, "dataset": "x"})
    assert fields(extra) == ["dataset"]
    # the preset's 1024 for SDXL (an explicit model_family must be the catalogue's: an SDXL model here)
    sdxl = {"base_model": sdxl_model, "model_family": "sdxl"}
    clash = post({"config": {**sdxl, "preset": "character", "max_bucket_reso": 768}, "counts": LISA})
    assert clash.status_code == 422 and "max_bucket_reso" in clash.json()["error"]["message"]
    # a caption config's lengths out of order, max_length left at its default (issue 15: it was accepted)
    captioning = post(
        {"config": {**base, "captioning": {"method": "blip", "min_length": 306}}, "counts": LISA}
    )
    assert captioning.status_code == 422 and fields(captioning) == ["config.captioning.max_length"]
    assert "min_length (306)" in captioning.json()["error"]["message"]
    not_json = client.post("/v1/plan", headers={**headers, "content-type": "application/json"}, content=b"{")
    assert not_json.status_code == 422 and fields(not_json) == ["body"]
    assert client.post("/v1/plan", json={"config": base, "counts": LISA}).status_code == 401

    # another owner's dataset is unknown here too
    dataset = upload(client, headers, write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False)))
    with session_scope(pg_url) as session:
        other = {"Authorization": f"Bearer {create_api_key(session, owner=f'o-{uuid.uuid4().hex[:6]}')}"}
    stolen = client.post("/v1/plan", headers=other, json={"config": base, "dataset_id": dataset["id"]})
    assert stolen.status_code == 422 and fields(stolen) == ["dataset_id"]
    assert job_count(pg_url) == jobs_before
    assert all(k.startswith(f"datasets/{dataset['id']}/") for k in bucket_keys(s3_server, bucket))


def test_kohya_import_endpoint_feeds_a_dry_run(client, headers):
    response = client.post("/v1/configs/kohya", headers=headers, json=guide_character_config())
    assert response.status_code == 200, response.text
    imported = response.json()
    config = imported["config"]
    assert config["base_model"] == "v1-5-pruned-emaonly.safetensors" and config["batch_size"] == 2
    assert imported["unsupported"] == [] and "xformers" in {i["key"] for i in imported["ignored"]}
    assert any("models directory" in n for n in imported["notes"])
    assert any(
        "'v1-5-pruned-emaonly.safetensors' is not a base model this deployment has" in n
        for n in imported["notes"]
    )
    config = {**config, "base_model": "tiny-sd15"}  # one that GET /v1/models lists
    out = client.post("/v1/plan", headers=headers, json={"config": config, "counts": LISA}).json()
    # 34 x 6 = 204 samples / batch 2 = 102 steps per epoch, 10 epochs
    assert out["plan"]["steps_per_epoch"] == 102 and out["plan"]["total_steps"] == 1020
    assert {"bf16_gpu", "adamw8bit_gpu", "epoch_length"} == {w["code"] for w in out["warnings"]}

    refused = client.post("/v1/configs/kohya", headers=headers, json=["not", "an", "object"])
    assert refused.status_code == 422 and fields(refused) == ["body"]
    assert client.post("/v1/configs/kohya", json={}).status_code == 401


def test_sd_scripts_import_endpoint_feeds_a_dry_run(client, headers):
    body = {"config_toml": SDXL_LOCON_TOML, "dataset_toml": DATASET_TOML, "script": "sdxl_train_network"}
    response = client.post("/v1/configs/sd-scripts", headers=headers, json=body)
    assert response.status_code == 200, response.text
    imported = response.json()
    config = imported["config"]
    assert config["model_family"] == "sdxl" and (config["conv_dim"], config["batch_size"]) == (16, 4)
    assert {u["key"] for u in imported["unsupported"]} == {"sample_prompts"}
    assert any("`img/10_ohwx woman/`" in n for n in imported["notes"])
    assert any("is not a base model this deployment has" in n for n in imported["notes"])

    sd15 = client.post("/v1/configs/sd-scripts", headers=headers, json={"config_toml": SD15_LORA_TOML}).json()
    config = {**sd15["config"], "base_model": "tiny-sd15"}
    out = client.post("/v1/plan", headers=headers, json={"config": config, "counts": LISA})
    assert out.status_code == 200, out.text
    assert out.json()["plan"]["steps_per_epoch"] == 102  # 34 x 6 / batch 2, as for the kohya_ss import

    def refused(json_body):
        response = client.post("/v1/configs/sd-scripts", headers=headers, json=json_body)
        assert response.status_code == 422, response.text
        return fields(response)

    assert refused({"config_toml": "network_dim = \n"}) == ["config_toml"]
    assert refused({"dataset_toml": "[[datasets]]\nbatch_size = 'four'\n"}) == [
        "dataset_toml.datasets.0.batch_size"
    ]
    assert refused({"config_toml": 'learning_rate = "1e-4"'}) == ["config_toml.learning_rate"]
    assert refused({}) == ["config_toml"]
    assert refused({"config_toml": "", "toml": ""}) == ["toml"]
    assert refused({"config_toml": 3}) == ["config_toml"]
    assert refused({"config_toml": "", "script": "train_db"}) == ["script"]
    assert client.post("/v1/configs/sd-scripts", json={}).status_code == 401


def test_flux_imports_refuse_by_key_and_the_refused_values_are_422s_naming_the_field(client, headers):
    body = {"config_toml": FLUX_DOCS_TOML, "dataset_toml": FLUX_DATASET_TOML, "script": "flux_train_network"}
    response = client.post("/v1/configs/sd-scripts", headers=headers, json=body)
    assert response.status_code == 200, response.text
    imported = response.json()
    config = imported["config"]
    assert config["model_family"] == "flux1" and config["timestep_sampling"] == "flux_shift"
    assert {u["key"] for u in imported["unsupported"]} == {"blocks_to_swap"}

    kohya = client.post("/v1/configs/kohya", headers=headers, json=flux_preset_config())
    assert kohya.status_code == 200, kohya.text
    assert kohya.json()["config"]["model_family"] == "flux1"
    assert {u["key"] for u in kohya.json()["unsupported"]} == {"full_bf16", "max_train_steps"}
    assert kohya.json()["config"]["fp8_base"] is True  # sd-scripts' fp8 base weights, mapped as such

    # what the importers refuse or set aside, sent as the config itself, is a 422 naming the field
    counts = {"subsets": [{"folder": "img/10_ohwx woman", "images": 20}]}
    for field, value in (("model_prediction_type", "sigma_scaled"), ("noise_offset", 0.05)):
        refused = client.post(
            "/v1/plan", headers=headers, json={"config": {**config, field: value}, "counts": counts}
        )
        assert refused.status_code == 422 and fields(refused) == [f"config.{field}"], refused.text
