"""FLUX.1 on the API's surfaces: fields a family cannot use are 422s naming them (by the catalogue's family
when model_family is auto), sizes at multiples of 16 px, the plan's family, the FLUX presets, GET /v1/models
and queue routing by family. The catalogue holds a FLUX.1 dev file (tests/api/conftest.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from shared.config.family_options import family_conflicts
from shared.config.flux_presets import FLUX_VALUES
from shared.config.spec import TrainingConfig
from shared.db.models import Job
from shared.db.session import session_scope
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env

LISA = {"subsets": [{"folder": "img/6_lisabp woman", "images": 34}]}
SMALL = {"resolution": 64, "min_bucket_reso": 64, "epochs": 1}  # the test zips' 64 px images, one bucket


def job_count(pg_url: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def plan(client: TestClient, headers: dict, config: dict, counts: dict = LISA):  # noqa: ANN201
    return client.post("/v1/plan", headers=headers, json={"config": config, "counts": counts})


def submit(client: TestClient, headers: dict, zip_path: Path, config: dict):  # noqa: ANN201
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("set.zip", fh, "application/zip")},
            data={"config": json.dumps(config)},
        )


def fields(response) -> list[str]:  # noqa: ANN001
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    return [f["field"] for f in error["details"]["fields"]]


@pytest.fixture
def flux_queue() -> str:
    return f"flux-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def flux_client(env, flux_queue) -> Iterator[TestClient]:
    """flux1 jobs go to a queue of this test's own (LORABAKE_QUEUE_ROUTES), so the session's other tests do
    not find them in line before theirs."""
    routes = json.dumps({"flux1": flux_queue})
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_QUEUE_ROUTES": routes}))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_snr_gamma", 5.0), ("noise_offset", 0.05), ("clip_skip", 2), ("v_parameterization", True)],
)
def test_an_sd_field_on_a_flux1_model_is_a_422_naming_it_and_stores_nothing(
    flux_client, headers, flux_model, pg_url, tmp_path, s3_server, bucket, field, value
):
    config = {"base_model": flux_model, **SMALL, field: value}  # model_family auto: the catalogue says flux1
    assert fields(plan(flux_client, headers, config)) == [f"config.{field}"]
    before = job_count(pg_url)
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    refused = submit(flux_client, headers, zip_path, config)
    assert fields(refused) == [f"config.{field}"]
    assert "flux1" in refused.json()["error"]["message"]
    assert job_count(pg_url) == before and bucket_keys(s3_server, bucket) == []


def test_a_flux_field_on_an_sd_model_is_a_422_naming_it(client, headers, tmp_path, s3_server, bucket):
    auto = {"base_model": "tiny-sd15", **SMALL, "timestep_sampling": "shift"}
    assert fields(plan(client, headers, auto)) == ["config.timestep_sampling"]
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    assert fields(submit(client, headers, zip_path, auto)) == ["config.timestep_sampling"]
    # an explicit family is the config's own check, and names the field the same way
    explicit = {**auto, "model_family": "sd1", "guidance_scale": 1.0}
    assert set(fields(plan(client, headers, explicit))) == {
        "config.timestep_sampling",
        "config.guidance_scale",
    }
    assert bucket_keys(s3_server, bucket) == []


def test_a_model_family_other_than_the_catalogues_is_a_422_naming_it(client, headers, flux_model):
    assert fields(plan(client, headers, {"base_model": flux_model, "model_family": "sdxl"})) == [
        "config.model_family"
    ]
    wrong = plan(client, headers, {"base_model": "tiny-sd15", "model_family": "flux1"})
    assert fields(wrong) == ["config.model_family"]
    assert wrong.json()["error"]["details"]["catalogue_family"] == "sd1"
    assert "leave model_family at auto" in wrong.json()["error"]["message"]
    same = plan(client, headers, {"base_model": flux_model, "model_family": "flux1"})
    assert same.status_code == 200, same.text


def test_flux1_sizes_are_multiples_of_16_px_and_sd_sizes_as_before(client, headers, flux_model):
    auto = {"base_model": flux_model, "resolution": 520}
    assert fields(plan(client, headers, auto)) == ["config.resolution"]
    assert fields(plan(client, headers, {**auto, "model_family": "flux1"})) == ["config.resolution"]
    steps = {"base_model": flux_model, "resolution": 480, "bucket_reso_steps": 40, "min_bucket_reso": 240,
             "max_bucket_reso": 960}  # fmt: skip
    assert fields(plan(client, headers, steps)) == ["config.bucket_reso_steps"]
    assert plan(client, headers, {**steps, "bucket_reso_steps": 48}).status_code == 200
    sd = plan(client, headers, {"base_model": "tiny-sd15", "resolution": 520, "min_bucket_reso": 64})
    assert sd.status_code == 200, sd.text


def test_the_plan_says_the_family_and_its_size_multiple(client, headers, flux_model):
    sizes = [{"width": 1000, "height": 700, "count": 3}, {"width": 600, "height": 900, "count": 2}]
    counts = {"subsets": [{"folder": "img/2_ohwx", "images": 5, "sizes": sizes}]}
    out = plan(client, headers, {"base_model": flux_model, "resolution": 1024}, counts).json()
    assert (out["family"], out["size_multiple"]) == ("flux1", 16)
    assert all(b["width"] % 16 == 0 and b["height"] % 16 == 0 for b in out["plan"]["buckets"])
    sd = plan(client, headers, {"base_model": "tiny-sd15"}).json()
    assert (sd["family"], sd["size_multiple"]) == ("sd1", 8)


@pytest.mark.parametrize("name", ["character", "style", "concept"])
def test_a_preset_on_a_flux1_model_sets_the_flux_values_the_listing_shows(client, headers, flux_model, name):
    listed = client.get(f"/v1/presets/{name}", headers=headers).json()["families"]["flux1"]
    assert listed["values"] == FLUX_VALUES and "unet_lr" in listed["computed"]
    out = plan(client, headers, {"base_model": flux_model, "preset": name})
    assert out.status_code == 200, out.text
    config = out.json()["config"]
    assert {k: config[k] for k in listed["values"]} == listed["values"]
    assert config["unet_lr"] == 1e-4 and out.json()["plan"]["total_steps"] in range(1500, 3001)
    # the preset's own output fits flux1: valid with the family explicit, no field it cannot use
    explicit = TrainingConfig.model_validate({**config, "model_family": "flux1"})
    assert family_conflicts(explicit, "flux1") == []
    # and the SD values are unchanged on an SD model
    sd = plan(client, headers, {"base_model": "tiny-sd15", "preset": name}).json()["config"]
    assert sd["resolution"] == 512 and sd["guidance_scale"] is None and sd["network_dim"] >= 128


def test_the_catalogue_lists_flux1_models(client, headers, flux_model):
    models = {m["name"]: m for m in client.get("/v1/models", headers=headers).json()["items"]}
    flux = models[flux_model]
    assert (flux["family"], flux["prediction_type"], flux["kind"]) == ("flux1", None, "single_file")


def test_flux1_jobs_go_to_the_flux1_route(flux_client, flux_queue, headers, flux_model, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    job = submit(flux_client, headers, zip_path, {"base_model": flux_model, **SMALL})
    assert job.status_code == 201, job.text
    assert job.json()["queue"] == flux_queue  # the family read from the catalogue (model_family auto)
    assert flux_client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=headers).status_code == 202
