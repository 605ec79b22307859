"""POST /v1/generations against real Postgres, Redis and S3 (no worker consumes here): A1111 tags resolved
to the caller's LoRA files, Kohya flags, defaults from the LoRA's training job, refusals storing nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from shared.db.keys import add_api_key, identity_for_key
from shared.db.models import Artifact, Job, JobStatus, utcnow
from shared.db.session import session_scope

TRAIN_CONFIG = {"base_model": "tiny-sd15", "output_name": "toy", "model_family": "auto"}


def owner_of(pg_url: str, key: str) -> str:
    with session_scope(pg_url) as session:
        identity = identity_for_key(session, key)
        assert identity is not None
        return identity.owner


def lora_job(pg_url: str, owner: str, names: list[str], *, age: float = 0.0, **config) -> str:
    """A finished training job of `owner` whose LoRA files are `names`; `age`: created that many seconds
    ago (the newest job of a name wins)."""
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        job = Job(
            id=job_id,
            owner=owner,
            status=JobStatus.succeeded,
            config={**TRAIN_CONFIG, **config},
            plan={},
            dataset_key="k",
            created_at=utcnow() - timedelta(seconds=age),
        )
        for epoch, name in enumerate(names, start=1):
            job.artifacts.append(
                Artifact(
                    kind="lora",
                    name=f"{name}.safetensors",
                    epoch=epoch,
                    object_key=f"jobs/{job_id}/artifacts/x/{name}.safetensors",
                    size_bytes=1,
                    sha256=f"{epoch:064d}",
                )
            )
        session.add(job)
    return job_id


def jobs_of(pg_url: str, owner: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner))


def generate(client, headers, **body):  # noqa: ANN001, ANN201
    return client.post("/v1/generations", headers=headers, json={"base_model": "tiny-sd15", **body})


def error(response) -> dict:  # noqa: ANN001
    return response.json()["error"]


def test_tags_resolve_to_the_callers_loras_with_summed_and_negative_weights(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    source = lora_job(pg_url, owner, ["toy-000001", "toy"])
    prompt = "sks toy <lora:toy:0.5>, red <lora:toy-000001:-0.75> <lora:toy:0.25:1> --n blurry --w 96 --s 4"
    response = generate(client, headers, prompt=prompt, seed=7, cfg_scale=5)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"], job["seed"], job["progress"]["total_steps"]) == (
        "generate",
        "queued",
        7,
        4,  # progress counts denoising steps (--s 4), not images
    )
    config = job["config"]
    assert config["prompt"] == "sks toy , red" and config["prompt_line"] == prompt
    assert (config["negative_prompt"], config["width"], config["height"], config["steps"]) == (
        "blurry",
        96,
        512,
        4,
    )
    assert (config["cfg_scale"], config["sampler"], config["family"]) == (5.0, "ddim", "sd1")
    loras = {lora["name"]: lora for lora in config["loras"]}
    assert list(loras) == ["toy", "toy-000001"]  # the order names first appear in
    assert (loras["toy"]["te_weight"], loras["toy"]["unet_weight"]) == (0.75, 1.5)  # 0.5 + 0.25, 0.5 + 1
    assert (loras["toy-000001"]["te_weight"], loras["toy-000001"]["unet_weight"]) == (-0.75, -0.75)
    assert loras["toy"]["job_id"] == source and loras["toy"]["tag"] == "<lora:toy:0.5>"
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert fetched["kind"] == "generate" and fetched["queue"] == job["queue"] is not None


def test_no_tags_is_the_base_model_with_defaults_and_a_recorded_seed(client, headers):
    response = generate(client, headers, prompt="a red toy")
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert config["loras"] == [] and (config["width"], config["height"], config["steps"]) == (512, 512, 30)
    assert isinstance(config["seed"], int) and response.json()["seed"] == config["seed"]


def test_defaults_follow_the_loras_training_resolution_and_sample_settings(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(
        pg_url,
        owner,
        ["small"],
        resolution=128,
        sample_prompts=["# a comment", "sks toy --s 12 --l 5 --ss euler --w 64", "other --s 40"],
        sample_sampler="k_euler_a",
    )
    response = generate(client, headers, prompt="sks toy <lora:small:0.8>")
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    # the size it trained at (not 512) and its first sample prompt's steps, CFG and sampler
    assert (config["width"], config["height"], config["steps"], config["cfg_scale"], config["sampler"]) == (
        128,
        128,
        12,
        5.0,
        "euler",
    )
    assert response.json()["progress"]["total_steps"] == 12
    # the prompt's flags and the body's fields still win
    response = generate(client, headers, prompt="sks toy <lora:small> --h 64", steps=3)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert (config["width"], config["height"], config["steps"], config["cfg_scale"]) == (128, 64, 3, 5.0)
    # no sample prompts: Kohya's sample defaults and the job's sample_sampler, at its resolution
    lora_job(pg_url, owner, ["plain"], resolution=192, sample_sampler="dpm++_2m_karras")
    config = generate(client, headers, prompt="x <lora:plain>").json()["config"]
    assert (config["width"], config["steps"], config["cfg_scale"], config["sampler"]) == (
        192,
        30,
        7.5,
        "dpm++_2m_karras",
    )


def test_the_newest_job_of_a_name_wins(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(pg_url, owner, ["lora"], age=60)
    newest = lora_job(pg_url, owner, ["lora"])
    response = generate(client, headers, prompt="x <lora:lora>")
    assert response.status_code == 201, response.text
    assert response.json()["config"]["loras"][0]["job_id"] == newest


def test_unknown_and_other_owners_loras_are_unknown_and_nothing_is_stored(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(pg_url, owner, ["mine"])
    lora_job(pg_url, f"other-{uuid.uuid4().hex[:6]}", ["theirs"])
    for tag, name in [("<lora:nope:1>", "nope"), ("<lora:theirs:0.8>", "theirs"), ("<lora:mine>", None)]:
        response = generate(client, headers, prompt=f"x <lora:mine:1> {tag}")
        if name is None:
            assert response.status_code == 201
            continue
        assert response.status_code == 422, response.text
        body = error(response)
        assert body["code"] == "unknown_lora" and body["details"] == {
            "field": "prompt",
            "tag": tag,
            "name": name,
        }
        assert tag in body["message"]
    assert jobs_of(pg_url, owner) == 2  # the LoRA's job and the one accepted generation


def test_a_lora_of_another_family_is_refused_naming_it(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(pg_url, owner, ["xl"], model_family="sdxl", base_model="some-sdxl")
    response = generate(client, headers, prompt="x <lora:xl:0.7>")
    assert response.status_code == 422, response.text
    body = error(response)
    assert body["code"] == "lora_family_mismatch" and body["details"]["tag"] == "<lora:xl:0.7>"
    assert (body["details"]["lora_family"], body["details"]["base_model_family"]) == ("sdxl", "sd1")
    assert "xl" in body["message"] and jobs_of(pg_url, owner) == 1


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"width": 100}, "validation_error", "width"),
        ({"height": 4096}, "validation_error", "height"),
        ({"steps": 0}, "validation_error", "steps"),
        ({"steps": 151}, "validation_error", "steps"),
        ({"cfg_scale": 31}, "validation_error", "cfg_scale"),
        ({"sampler": "warp"}, "validation_error", "sampler"),
        ({"seed": -1}, "validation_error", "seed"),
        ({"surprise": 1}, "validation_error", "surprise"),
        ({"prompt": "x --s 500"}, "invalid_generation", "steps"),
        ({"prompt": "x --w 64", "width": 64}, "conflicting_prompt_flag", "width"),
        ({"prompt": "x --d 3", "seed": 3}, "conflicting_prompt_flag", "seed"),
        ({"prompt": "x <lora:a:big>"}, "invalid_prompt", "prompt"),
        ({"prompt": "x --q 1"}, "invalid_prompt", "prompt"),
        ({"prompt": "x --n <lora:a>"}, "invalid_prompt", "prompt"),
        ({"base_model": "not-a-model"}, "unknown_base_model", "base_model"),
        ({"queue": "nowhere"}, "unknown_queue", "queue"),
        ({"webhook_events": ["status"]}, "invalid_webhook", "webhook_events"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, headers, key, pg_url, body, code, field):
    response = generate(client, headers, **{"prompt": "x", **body})
    assert response.status_code == 422, response.text
    err = error(response)
    fields = [f["field"] for f in err["details"].get("fields", [])] or [err["details"].get("field")]
    assert err["code"] == code and field in fields, err
    assert jobs_of(pg_url, owner_of(pg_url, key)) == 0


def test_needs_the_jobs_write_scope(client, pg_url):
    with session_scope(pg_url) as session:
        _, reader = add_api_key(session, f"o-{uuid.uuid4().hex[:6]}", scopes=["jobs:read"])
    response = generate(client, {"Authorization": f"Bearer {reader}"}, prompt="x")
    assert response.status_code == 403 and error(response)["details"]["scope"] == "jobs:write"
