"""Retention through the API (in-process, real Postgres and S3; no worker): a job's `retention_days` within
its key's `max_retention_days`, and an expired job's files answering 410 with the date they expired."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from shared.db.keys import add_api_key, owner_for_key
from shared.db.models import Artifact, Job, JobStatus, utcnow
from shared.db.session import session_scope
from shared.jobs.state import set_status
from shared.jobs.sweeper import RetentionSweeper
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys

CONFIG = {"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64, "epochs": 1, "network_dim": 4}


def _submit(client, key: str, zip_path: Path, **config):  # noqa: ANN001, ANN202
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps({**CONFIG, **config})},
        )


def test_retention_days_is_bounded_by_the_keys_maximum(client, pg_url, tmp_path, s3_server, bucket):
    with session_scope(pg_url) as session:
        _, key = add_api_key(session, f"owner-{uuid.uuid4().hex[:8]}", limits={"max_retention_days": 7})
    zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=2))
    for asked in (30, 0, -1):  # past the maximum, forever, below zero
        refused = _submit(client, key, zip_path, retention_days=asked)
        assert refused.status_code == 422, refused.text
        assert "config.retention_days" in json.dumps(refused.json()["error"]["details"])
    assert bucket_keys(s3_server, bucket) == []  # a refusal stores nothing
    asked = _submit(client, key, zip_path, retention_days=5).json()
    unasked = _submit(client, key, zip_path).json()  # the deployment keeps forever: the key's maximum
    assert (asked["retention_days"], unasked["retention_days"]) == (5, 7)
    assert asked["expires_at"] is None  # dated when it finishes


def test_an_expired_jobs_files_answer_410_naming_the_date(client, headers, key, pg_url):
    state = client.app.state.lorabake
    store = state.store
    with session_scope(pg_url) as session:
        owner = owner_for_key(session, key)
    job_id = uuid.uuid4().hex
    key_of_file = f"jobs/{job_id}/artifacts/t/gone-lora.safetensors"
    src = Path(state.settings.work_dir) / "gone-lora.safetensors"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"lora")
    store.put_file(key_of_file, src)
    with session_scope(pg_url) as session:
        job = Job(
            id=job_id,
            owner=owner,
            status=JobStatus.training,
            config={"base_model": "tiny-sd15", "output_name": "gone-lora"},
            plan={},
            dataset_key="",
            retention_days=3,
        )
        job.artifacts.append(
            Artifact(
                kind="lora",
                name="gone-lora.safetensors",
                epoch=1,
                is_final=True,
                object_key=key_of_file,
                size_bytes=4,
                sha256="0" * 64,
            )
        )
        session.add(job)
        session.flush()
        set_status(session, job, JobStatus.succeeded)
        job.finished_at -= timedelta(days=4)  # 3 days' retention ran out yesterday
        job.expires_at -= timedelta(days=4)
        expired_on = job.expires_at.date().isoformat()
        artifact_id = job.artifacts[0].id
    auth = {"Authorization": f"Bearer {key}"}

    view = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert (
        view["retention_days"] == 3
        and view["expires_at"].startswith(expired_on)
        and view["expired_at"] is None
    )
    download = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact_id}", headers=auth, follow_redirects=False)
    assert download.status_code == 410, download.text  # from its date on, before the sweeper came by
    error = download.json()["error"]
    assert error["code"] == "expired" and expired_on in error["message"]
    assert error["details"]["expired_on"] == expired_on
    compare = client.post(f"/v1/jobs/{job_id}/comparisons", headers=auth, json={})
    assert compare.status_code == 410 and expired_on in compare.json()["error"]["message"]
    generate = client.post(
        "/v1/generations",
        headers=auth,
        json={"base_model": "tiny-sd15", "prompt": "a cat <lora:gone-lora:1>"},
    )
    assert generate.status_code == 410, generate.text
    assert generate.json()["error"]["details"]["field"] == "prompt"

    sweeper = RetentionSweeper(state.settings, state.sessions, store, holder="test")
    assert sweeper.sweep_job(job_id, utcnow())  # this job only: the session's database is shared
    assert store.list_keys(f"jobs/{job_id}/") == []
    view = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert view["expired_at"] is not None and view["artifacts"][0]["expired_at"] is not None
    assert view["expires_at"].startswith(expired_on)
    download = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact_id}", headers=auth, follow_redirects=False)
    assert download.status_code == 410 and expired_on in download.json()["error"]["message"]
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).text
    assert "event: expired" in events
