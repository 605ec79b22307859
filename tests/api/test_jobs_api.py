"""The HTTP contract of /v1/jobs against real Postgres, Redis and an S3 server (no worker consumes here)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from shared.db.keys import create_api_key
from shared.db.models import Job
from shared.db.session import session_scope
from tests.support.datasets import image_bytes, kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env

CONFIG = {
    "base_model": "tiny-sd15",
    "resolution": 64,
    "min_bucket_reso": 64,  # Kohya's 256 default must not exceed the resolution (64x64 images: one bucket)
    "epochs": 3,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "mixed_precision": "no",
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, key: str, zip_path: Path, config: dict | str = CONFIG):
    text = config if isinstance(config, str) else json.dumps(config)
    with open(zip_path, "rb") as fh:
        return client.post(
            "/v1/jobs",
            headers=auth(key),
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": text},
        )


def job_count(pg_url: str) -> int:
    with session_scope(pg_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_submit_stores_job_plan_and_dataset(client, key, tmp_path, s3_server, bucket):
    zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=4, repeats=3, with_reg=True))
    response = submit(client, key, zip_path)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    plan = job["plan"]
    # Kohya: 4 images x 3 repeats = 12 train samples, reg matched to 12 -> 24 per epoch / batch 2 = 12 steps
    assert (plan["images"], plan["reg_images"], plan["repeats"]) == (4, 3, 3)
    assert plan["steps_per_epoch"] == 12 and plan["total_steps"] == 36
    assert plan["saved_epochs"] == [1, 2, 3]
    assert job["progress"]["total_steps"] == 36
    assert bucket_keys(s3_server, bucket) == [f"jobs/{job['id']}/dataset.zip"]
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=auth(key))
    assert fetched.status_code == 200 and fetched.json()["id"] == job["id"]
    assert fetched.headers["x-request-id"]


def test_requires_a_valid_key(client, tmp_path):
    assert client.get("/v1/jobs").status_code == 401
    bad = client.get("/v1/jobs", headers=auth("lb_nope"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_other_owners_job_is_not_found(client, key, pg_url, tmp_path):
    job = submit(client, key, write_zip(tmp_path / "s.zip", kohya_entries())).json()
    with session_scope(pg_url) as session:
        bob = create_api_key(session, owner="bob")
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(bob)).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(bob)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(bob)).json()["items"] == []


def test_list_is_newest_first_paginated_and_filtered(client, key, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries())
    ids = [submit(client, key, zip_path).json()["id"] for _ in range(3)]
    page1 = client.get("/v1/jobs?limit=2", headers=auth(key)).json()
    assert [j["id"] for j in page1["items"]] == ids[::-1][:2]
    page2 = client.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=auth(key)).json()
    assert [j["id"] for j in page2["items"]] == [ids[0]] and page2["next_cursor"] is None
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth(key))
    canceled = client.get("/v1/jobs?status=canceled", headers=auth(key)).json()["items"]
    assert [j["id"] for j in canceled] == [ids[1]]
    bad = client.get("/v1/jobs?status=sleeping", headers=auth(key))
    assert bad.status_code == 422 and "status" in bad.json()["error"]["message"]


def test_cancel_queued_job_then_conflict(client, key, tmp_path):
    job = submit(client, key, write_zip(tmp_path / "s.zip", kohya_entries())).json()
    first = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    assert first.status_code == 202 and first.json()["status"] == "canceled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def _symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("img/2_x y/a.png", image_bytes((1, 2, 3)))
        link = zipfile.ZipInfo("img/2_x y/b.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    return path


def _bomb_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("img/2_x y/a.png", image_bytes((1, 2, 3)))
        archive.writestr("img/2_x y/b.txt", b"\0" * (20 * 1024 * 1024))
    return path


BAD_ZIPS = {
    "traversal": (
        lambda p: write_zip(p, {"img/2_x y/a.png": image_bytes((1, 2, 3)), "../evil.png": b"x"}),
        "unsafe_path",
        "../evil.png",
    ),
    "symlink": (_symlink_zip, "symlink_entry", "img/2_x y/b.png"),
    "bomb": (_bomb_zip, "zip_bomb", "img/2_x y/b.txt"),
    "not_a_zip": (lambda p: (p.write_bytes(b"this is not a zip at all"), p)[1], "not_a_zip", None),
    "no_images": (lambda p: write_zip(p, {"notes.txt": b"hello"}), "no_images", None),
    "corrupt_image": (
        lambda p: write_zip(p, {"img/2_x y/a.png": b"\x89PNG\r\n\x1a\nbroken"}),
        "corrupt_image",
        "img/2_x y/a.png",
    ),
    "missing_prefix": (
        lambda p: write_zip(p, {"img/lisabp woman/a.png": image_bytes((1, 2, 3))}),
        "missing_repeats_prefix",
        "img/lisabp woman/a.png",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_ZIPS))
def test_bad_zips_are_4xx_naming_the_entry_and_store_nothing(
    kind, client, key, tmp_path, pg_url, s3_server, bucket
):
    build, code, entry = BAD_ZIPS[kind]
    before = job_count(pg_url)
    response = submit(client, key, build(tmp_path / f"{kind}.zip"))
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if entry:
        assert error["details"]["entry"] == entry
        assert entry in error["message"]
    assert job_count(pg_url) == before
    assert bucket_keys(s3_server, bucket) == []


def test_a_zip_with_several_problems_names_every_one_and_stores_nothing(
    client, key, tmp_path, pg_url, s3_server, bucket
):
    """Every problem at once (issue 15): the entries, the layout and each image, in one 422 that keeps the
    first problem's code and entry for clients that read only those."""
    entries = {
        "img/2_x y/a.png": image_bytes((1, 2, 3)),
        "../evil.png": b"x",
        "img/2_x y/broken.png": b"\x89PNG\r\n\x1a\nbroken",
        "img/2_x y/tiny.png": image_bytes((1, 2, 3), size=(4, 4)),
        "img/2_x y/anim.gif": b"GIF89a" + b"\0" * 20,
        "img/lisabp woman/b.png": image_bytes((4, 5, 6)),
    }
    before = job_count(pg_url)
    response = submit(client, key, write_zip(tmp_path / "many.zip", entries))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["entry"]) == ("unsafe_path", "../evil.png")
    assert [(p["file"], p["code"]) for p in error["details"]["problems"]] == [
        ("../evil.png", "unsafe_path"),
        ("img/2_x y/anim.gif", "unsupported_image_type"),
        ("img/lisabp woman/b.png", "missing_repeats_prefix"),
        ("img/2_x y/broken.png", "corrupt_image"),
        ("img/2_x y/tiny.png", "image_too_small"),
    ]
    assert error["details"]["more_problems"] == 0
    assert error["message"].startswith("The zip has 5 problems:")
    assert all(p["file"] in error["message"] for p in error["details"]["problems"])
    assert job_count(pg_url) == before
    assert bucket_keys(s3_server, bucket) == []


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({**CONFIG, "learning_rate_typo": 1}, "config.learning_rate_typo"),
        ({**CONFIG, "network_dim": 0}, "config.network_dim"),
        ({**CONFIG, "mixed_precision": "fp8"}, "config.mixed_precision"),
        ({k: v for k, v in CONFIG.items() if k != "base_model"}, "config.base_model"),
        ({**CONFIG, "output_name": "../x"}, "config.output_name"),
    ],
)
def test_invalid_config_is_422_naming_the_field(
    config, field, client, key, tmp_path, pg_url, s3_server, bucket
):
    before = job_count(pg_url)
    response = submit(client, key, write_zip(tmp_path / "s.zip", kohya_entries()), config)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    assert field in [f["field"] for f in error["details"]["fields"]]
    assert field in error["message"]
    assert job_count(pg_url) == before and bucket_keys(s3_server, bucket) == []


def test_config_that_is_not_json_and_missing_dataset(client, key, tmp_path):
    response = submit(client, key, write_zip(tmp_path / "s.zip", kohya_entries()), "{not json")
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_config"
    missing = client.post("/v1/jobs", headers=auth(key), data={"config": json.dumps(CONFIG)})
    assert missing.status_code == 422 and missing.json()["error"]["details"]["field"] == "dataset"


def test_upload_over_the_limit_is_413(env, key, tmp_path, pg_url, s3_server, bucket):
    small = settings_from_env({**env, "LORABAKE_MAX_UPLOAD_BYTES": "2000"})
    with TestClient(create_app(small)) as client:
        response = submit(client, key, write_zip(tmp_path / "s.zip", kohya_entries(images=6)))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert bucket_keys(s3_server, bucket) == []


def test_health_and_readiness(client, env):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    broken = settings_from_env(
        {**env, "LORABAKE_BROKER_URL": "redis://127.0.0.1:1/0", "LORABAKE_S3_BUCKET": "no-such-bucket"}
    )
    with TestClient(create_app(broken)) as bad_client:
        response = bad_client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("error")
    assert checks["storage"].startswith("error")


def test_openapi_documents_the_upload(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"config"}
    assert {"dataset", "dataset_id", "config"} <= set(body["properties"])


def test_json_body_that_is_broken_or_huge_is_a_4xx(client, key):
    headers = {**auth(key), "Content-Type": "application/json"}
    broken = client.post("/v1/jobs", headers=headers, content=b'{"dataset_id": ')
    assert broken.status_code == 422 and broken.json()["error"]["details"]["fields"][0]["field"] == "body"
    huge = client.post("/v1/jobs", headers=headers, content=b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
