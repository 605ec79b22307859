"""POST /v1/jobs/{id}/comparisons against real Postgres, Redis and S3 (no worker consumes here): defaults
from the training job (its sample prompts as trained, other prompts at its resolution and sample settings),
its saved epochs, progress counted in denoising steps, refusals that store nothing, ownership."""

from __future__ import annotations

import uuid

import pytest

from shared.config.sample_prompts import derive_seed
from shared.db.models import Artifact, Job, JobStatus
from shared.db.session import session_scope
from tests.api.test_generations_api import error, jobs_of, owner_of

PROMPTS = ["# a comment", "sks toy, red --n dull --w 64 --h 96 --s 4 --d 5", "sks toy, blue --ss euler"]
PLAN = {"subsets": [{"folder": "img/1_sks toy", "is_reg": False, "trigger": "sks", "class_token": "toy"}]}


def training_job(pg_url: str, owner: str, *, epochs=(1, 2, 3), status=JobStatus.succeeded, **config) -> str:
    """A training job that saved `epochs` (the last as the final file) plus a step save, seed 42."""
    job_id = uuid.uuid4().hex
    config = {
        "base_model": "tiny-sd15",
        "output_name": "toy",
        "sample_prompts": PROMPTS,
        "sample_sampler": "k_euler_a",
        "mixed_precision": "no",
        **config,
    }
    with session_scope(pg_url) as session:
        job = Job(id=job_id, owner=owner, status=status, config=config, plan=PLAN, dataset_key="k", seed=42)
        names = [("toy-step00000003.safetensors", 1, False)]
        names += [
            (f"toy-{e:06d}.safetensors" if e != epochs[-1] else "toy.safetensors", e, e == epochs[-1])
            for e in epochs
        ]
        for name, epoch, final in names:
            job.artifacts.append(
                Artifact(
                    kind="lora",
                    name=name,
                    epoch=epoch,
                    is_final=final and status == JobStatus.succeeded,
                    object_key=f"jobs/{job_id}/a/{name}",
                    size_bytes=1,
                    sha256="a" * 64,
                )
            )
        session.add(job)
    return job_id


def compare(client, headers, job_id: str, **body):  # noqa: ANN001, ANN201
    return client.post(f"/v1/jobs/{job_id}/comparisons", headers=headers, json=body)


def test_defaults_are_the_jobs_sample_prompts_every_saved_epoch_and_four_weights(
    client, headers, key, pg_url
):
    source = training_job(pg_url, owner_of(pg_url, key))
    response = compare(client, headers, source)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"]) == ("compare", "queued")
    config = job["config"]
    assert config["weights"] == [0.0, 0.5, 0.75, 1.0]
    assert [(e["epoch"], e["name"]) for e in config["epochs"]] == [
        (1, "toy-000001"),
        (2, "toy-000002"),
        (3, "toy"),
    ]
    red, blue = config["prompts"]  # the comment line left out
    assert (red["prompt"], red["negative_prompt"], red["width"], red["height"], red["steps"]) == (
        "sks toy, red",
        "dull",
        64,
        96,
        4,
    )
    assert red["seeds"] == [5] and red["sampler"] == "k_euler_a"  # the config's sample_sampler
    # no --d: the seed its training samples used (the prompt's index among the parsed lines)
    assert blue["seeds"] == [derive_seed(42, 1)] and blue["sampler"] == "euler"
    assert (blue["width"], blue["steps"], blue["cfg_scale"]) == (512, 30, 7.5)  # Kohya's defaults
    assert job["plan"] == {"images": 24, "grids": 2, "source_job_id": source}
    # denoising steps: each prompt's 3 epochs x 3 weights, plus its weight-0 cell drawn once, at its steps
    assert job["progress"]["total_steps"] == (3 * 3 + 1) * (4 + 30)


def test_body_fields_apply_to_every_prompt(client, headers, key, pg_url):
    source = training_job(pg_url, owner_of(pg_url, key))
    body = dict(
        prompts=["a --s 9 --w 128", "b"],
        negative_prompt="ugly",
        weights=[-1, 1],
        epochs=[3, 1],
        seeds=[1, 2],
        sampler="DPM++ 2M Karras",
        steps=3,
        cfg_scale=4,
        width=64,
    )
    response = compare(client, headers, source, **body)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert [e["epoch"] for e in config["epochs"]] == [3, 1] and config["weights"] == [-1.0, 1.0]
    for prompt in config["prompts"]:
        assert (prompt["negative_prompt"], prompt["seeds"], prompt["sampler"]) == (
            "ugly",
            [1, 2],
            "dpm++_2m_karras",
        )
        assert (prompt["steps"], prompt["cfg_scale"], prompt["width"], prompt["height"]) == (3, 4.0, 64, 512)
    # 2 prompts x 2 seeds x 2 epochs x 2 weights (no weight 0), 3 denoising steps each
    assert response.json()["progress"]["total_steps"] == 2 * 2 * 2 * 2 * 3


def test_without_sample_prompts_the_prompt_is_trigger_and_class(client, headers, key, pg_url):
    source = training_job(pg_url, owner_of(pg_url, key), sample_prompts=[])
    response = compare(client, headers, source, weights=[1])
    assert response.status_code == 201, response.text
    assert [p["prompt"] for p in response.json()["config"]["prompts"]] == ["sks toy"]


def test_other_prompts_follow_the_training_resolution_and_sample_settings(client, headers, key, pg_url):
    source = training_job(pg_url, owner_of(pg_url, key), resolution=128)
    own, typed, flagged = PROMPTS[2], "a toy on a shelf", "a toy --w 64 --s 9"
    response = compare(client, headers, source, prompts=[own, typed, flagged], weights=[1])
    assert response.status_code == 201, response.text
    settings = [
        (p["width"], p["height"], p["steps"], p["cfg_scale"], p["sampler"])
        for p in response.json()["config"]["prompts"]
    ]
    assert settings == [
        (512, 512, 30, 7.5, "euler"),  # one of its sample prompts: as its training samples were drawn
        (128, 128, 4, 7.5, "k_euler_a"),  # its resolution, its first sample prompt's --s, its sampler
        (64, 128, 9, 7.5, "k_euler_a"),  # a line's own flags still win
    ]
    without = training_job(pg_url, owner_of(pg_url, key), resolution=192, sample_prompts=[])
    (prompt,) = compare(client, headers, without, weights=[1]).json()["config"]["prompts"]
    assert (prompt["prompt"], prompt["width"], prompt["height"], prompt["steps"]) == ("sks toy", 192, 192, 30)


def test_a_running_job_with_a_saved_epoch_can_be_compared(client, headers, key, pg_url):
    source = training_job(pg_url, owner_of(pg_url, key), epochs=(1, 2), status=JobStatus.training)
    response = compare(client, headers, source, weights=[1])
    assert response.status_code == 201, response.text


def test_another_owners_job_is_not_found_and_a_job_without_loras_conflicts(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    theirs = training_job(pg_url, f"other-{uuid.uuid4().hex[:6]}")
    assert compare(client, headers, theirs).status_code == 404
    assert compare(client, headers, "not-an-id").status_code == 404
    with session_scope(pg_url) as session:
        empty = Job(
            id=uuid.uuid4().hex, owner=owner, config={"base_model": "tiny-sd15"}, plan={}, dataset_key="k"
        )
        session.add(empty)
        empty_id = empty.id
    response = compare(client, headers, empty_id)
    assert response.status_code == 409 and error(response)["code"] == "no_saved_lora"
    assert jobs_of(pg_url, owner) == 1


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"epochs": [2, 9]}, "unknown_epoch", "epochs"),
        ({"epochs": [1, 1]}, "validation_error", "epochs"),
        ({"weights": [0.5, 0.5]}, "validation_error", "weights"),
        ({"weights": [11]}, "validation_error", "weights.0"),
        ({"weights": []}, "validation_error", "weights"),
        ({"seeds": list(range(9))}, "validation_error", "seeds"),
        ({"width": 65}, "validation_error", "width"),
        ({"steps": 500}, "validation_error", "steps"),
        ({"prompts": ["x --s 500"]}, "invalid_comparison", "prompts.0.steps"),
        ({"prompts": ["x <lora:toy:1>"]}, "invalid_prompt", "prompts.0"),
        ({"prompts": ["ok", "x --bad 1"]}, "invalid_prompt", "prompts.1"),
        ({"prompts": ["# only a comment"]}, "invalid_prompt", "prompts.0"),
        (
            {"seeds": [1, 2, 3, 4, 5, 6, 7, 8], "weights": [0, 0.25, 0.5, 0.75, 1, 1.25]},
            "too_many_images",
            "epochs",
        ),
        ({"queue": "nowhere"}, "unknown_queue", "queue"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(
    client, headers, key, pg_url, body, code, field
):
    owner = owner_of(pg_url, key)
    source = training_job(pg_url, owner)
    response = compare(client, headers, source, **body)
    assert response.status_code == 422, response.text
    err = error(response)
    fields = [f["field"] for f in err["details"].get("fields", [])] or [err["details"].get("field")]
    assert err["code"] == code and field in fields, err
    assert jobs_of(pg_url, owner) == 1
