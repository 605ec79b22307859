"""POST /v1/jobs/{id}/continue and config.network_weights at submission, against the real Postgres and S3
server (no worker consumes here: the finished jobs and their stored resume states are written as a worker
leaves them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.db.keys import create_api_key
from shared.db.models import Job, JobStatus, utcnow
from shared.db.session import session_scope
from shared.storage import build_store
from tests.api.test_jobs_api import CONFIG, auth, submit
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env


def _finished_job(
    client, key, env, tmp_path, *, status=JobStatus.succeeded, state=True, expired=False
) -> str:
    """A job submitted through the API, then ended as its worker would have: status, and with `state` its
    final resume state (3 epochs) stored with its record."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    job_id = submit(client, key, write_zip(tmp_path / "set.zip", kohya_entries())).json()["id"]
    settings = settings_from_env(env)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.status, job.seed, job.epoch = status, 1234, 3
        job.finished_at = utcnow()
        job.expired_at = utcnow() if expired else None
    if state:
        store = build_store(settings)
        blob = tmp_path / "state.pt"
        blob.write_bytes(b"state")
        record = tmp_path / "latest.json"
        key_ = f"jobs/{job_id}/state/latest"
        record.write_text(json.dumps({"key": key_, "step": 36, "epoch": 3, "size_bytes": 5}))
        store.put_file(key_, blob)
        store.put_file(f"{key_}.json", record)
    return job_id


def _continue(client, key, job_id, body=None):
    return client.post(f"/v1/jobs/{job_id}/continue", headers=auth(key), json=body or {"epochs": 2})


def row_estimate(pg_url: str, job_id: str) -> float | None:
    with session_scope(pg_url) as session:
        return session.get(Job, job_id).estimated_seconds


def test_continue_makes_a_new_job_numbered_on(client, key, env, tmp_path, pg_url):
    source = _finished_job(client, key, env, tmp_path)
    before = client.get(f"/v1/jobs/{source}", headers=auth(key)).json()
    response = _continue(client, key, source)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["id"] != source and job["continued_from"] == source and job["status"] == "queued"
    assert job["config"] == {**before["config"], "epochs": 5}  # the same config (after its preset)
    assert job["progress"]["total_epochs"] == 5
    assert (
        job["plan"]["total_steps"] == 5 * before["plan"]["steps_per_epoch"] == job["progress"]["total_steps"]
    )
    assert job["plan"]["saved_epochs"] == [1, 2, 3, 4, 5] and job["seed"] == 1234
    estimate = job["plan"]["estimate"]  # the run time of the two epochs it adds, not of five
    assert estimate["seconds"] > 0 and estimate["seconds"] == row_estimate(pg_url, job["id"])
    training, added_steps = estimate["training"], 2 * before["plan"]["steps_per_epoch"]
    expected = training["overhead_seconds"] + added_steps / training["steps_per_second"]
    assert training["seconds"] == pytest.approx(expected, rel=0.01)
    assert job["dataset"] == before["dataset"]
    with session_scope(pg_url) as session:
        row = session.get(Job, job["id"])
        assert row.dataset_key == session.get(Job, source).dataset_key  # the same dataset objects
    after = client.get(f"/v1/jobs/{source}", headers=auth(key)).json()
    assert after["status"] == "succeeded" and after["config"] == before["config"]  # the source is untouched


def test_continue_is_refused_when_it_cannot_train_on(client, key, env, tmp_path, pg_url):
    with session_scope(pg_url) as session:
        other = create_api_key(session, owner="someone-else")
    source = _finished_job(client, key, env, tmp_path / "a")
    missing = _continue(client, other, source)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    failed = _finished_job(client, key, env, tmp_path / "b", status=JobStatus.failed)
    refused = _continue(client, key, failed)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_succeeded"

    gone = _finished_job(client, key, env, tmp_path / "c", state=False)
    refused = _continue(client, key, gone)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "resume_state_gone"
    assert "resume state" in refused.json()["error"]["message"]

    expired = _finished_job(client, key, env, tmp_path / "d", expired=True)
    refused = _continue(client, key, expired)
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "job_expired"

    zero = _continue(client, key, source, {"epochs": 0})
    assert zero.status_code == 422 and "epochs" in json.dumps(zero.json()["error"]["details"])
    too_many = _continue(client, key, source, {"epochs": 998})  # 3 + 998 > 1000
    assert too_many.status_code == 422 and too_many.json()["error"]["details"]["field"] == "epochs"


# --- network_weights at submission --------------------------------------------------------------------------


def _lora_file(path: Path, *, rank: int, te: bool = True, version: str = "sd_v1", alpha: float = 2.0) -> Path:
    tensors = {}
    names = ["lora_unet_down_blocks_0_attentions_0_proj_in"]
    if te:
        names.append("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    for name in names:
        tensors[f"{name}.lora_down.weight"] = torch.zeros(rank, 32)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(32, rank)
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), {"ss_base_model_version": version, "ss_network_alpha": str(alpha)})
    return path


def _submit_with(client, key, tmp_path, weights: Path, config=CONFIG):
    zip_path = write_zip(tmp_path / "set.zip", kohya_entries())
    with open(zip_path, "rb") as dataset, open(weights, "rb") as lora:
        return client.post(
            "/v1/jobs",
            headers=auth(key),
            files={
                "dataset": (zip_path.name, dataset, "application/zip"),
                "network_weights": (weights.name, lora, "application/octet-stream"),
            },
            data={"config": json.dumps(config)},
        )


@pytest.mark.parametrize(
    ("file_options", "field"),
    [
        ({"rank": 8}, "config.network_dim"),
        ({"rank": 4, "version": "sdxl_base_v1-0"}, "config.base_model"),
        ({"rank": 4, "te": False}, "config.network_train_unet_only"),
        ({"rank": 4, "alpha": 4.0}, "config.network_alpha"),
    ],
)
def test_network_weights_that_do_not_fit_are_a_422_naming_the_field(
    client, key, tmp_path, s3_server, bucket, file_options, field
):
    response = _submit_with(client, key, tmp_path, _lora_file(tmp_path / "my.safetensors", **file_options))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "network_weights_mismatch" and error["details"]["field"] == field
    assert field in error["message"]
    assert bucket_keys(s3_server, bucket) == []  # nothing stored


def test_network_weights_file_is_stored_with_the_job(client, key, tmp_path, s3_server, bucket):
    import hashlib

    weights = _lora_file(tmp_path / "start.safetensors", rank=4)
    response = _submit_with(client, key, tmp_path, weights)
    assert response.status_code == 201, response.text
    job = response.json()
    recorded = job["config"]["network_weights"]
    assert recorded["file"] == "start.safetensors" and recorded["job"] is None
    assert recorded["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"jobs/{job['id']}/network_weights.safetensors" in bucket_keys(s3_server, bucket)

    # A job's epoch by reference: an unknown job, or one without that epoch, is a 422 naming the field.
    by_ref = {**CONFIG, "network_weights": {"job": "0" * 32, "epoch": 1}}
    refused = submit(client, key, write_zip(tmp_path / "s2.zip", kohya_entries()), by_ref)
    assert refused.status_code == 422 and refused.json()["error"]["details"]["field"] == (
        "config.network_weights.job"
    )
    by_ref = {**CONFIG, "network_weights": {"job": job["id"], "epoch": 1}}  # queued: no files yet
    refused = submit(client, key, write_zip(tmp_path / "s3.zip", kohya_entries()), by_ref)
    assert refused.status_code == 422 and refused.json()["error"]["details"]["field"] == (
        "config.network_weights.epoch"
    )
