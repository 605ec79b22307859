"""/v1/datasets against real Postgres and an S3 server: intake report, caption review, revisions, deletes."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from shared.db.keys import create_api_key
from shared.db.models import Job, JobStatus
from shared.db.session import session_scope
from tests.support.datasets import image_bytes, kohya_entries, write_zip
from tests.support.stack import bucket_keys


def upload(client: TestClient, headers: dict, zip_path: Path, options: dict | None = None):
    with open(zip_path, "rb") as fh:
        data = {"options": json.dumps(options)} if options else {}
        return client.post("/v1/datasets", headers=headers, files={"dataset": (zip_path.name, fh)}, data=data)


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def mixed_zip(tmp_path: Path) -> Path:
    entries = kohya_entries(images=4, repeats=3, with_reg=True, webp=True)
    entries["img/3_lisabp woman/dup.png"] = entries["img/3_lisabp woman/001.png"]  # same content twice
    entries["img/3_lisabp woman/anim.gif"] = b"GIF89a" + b"\0" * 20
    entries["img/3_lisabp woman/cmyk.jpg"] = cmyk_jpeg()
    entries["img/3_lisabp woman/tiny.png"] = image_bytes((1, 1, 1), size=(4, 4))
    return write_zip(tmp_path / "mixed.zip", entries)


def test_upload_reports_every_file_and_warns(client, headers, tmp_path, s3_server, bucket):
    response = upload(client, headers, mixed_zip(tmp_path))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert response.headers["location"] == f"/v1/datasets/{dataset['id']}"
    files = {f["path"]: f for f in dataset["files"]}
    folder = "img/3_lisabp woman"
    assert files[f"{folder}/dup.png"]["reason"] == "duplicate_image"
    assert files[f"{folder}/anim.gif"]["reason"] == "unsupported_image_type"
    assert files[f"{folder}/tiny.png"]["reason"] == "image_too_small"
    assert files[f"{folder}/003.webp"]["status"] == "converted"
    assert "webp converted to png" in files[f"{folder}/003.webp"]["conversions"]
    assert "cmyk converted to rgb" in files[f"{folder}/cmyk.jpg"]["conversions"]
    assert files[f"{folder}/002.jpg"]["status"] == "accepted"
    assert (dataset["images"], dataset["reg_images"]) == (5, 3)  # 4 + cmyk; reg folder has 3
    codes = {w["code"] for w in dataset["warnings"]}
    assert {"few_images", "captions_missing", "small_images", "duplicates_removed"} <= codes
    (rejected,) = [w for w in dataset["warnings"] if w["code"] == "images_rejected"]
    assert sorted(rejected["examples"]) == [f"{folder}/anim.gif", f"{folder}/tiny.png"]
    assert "reg_class_mismatch" not in codes  # reg/1_woman matches "lisabp woman"
    captions = {i["path"]: i["caption"] for i in dataset["image_list"]}
    assert captions[f"{folder}/001.png"] == "lisabp, woman, color 1"
    assert captions[f"{folder}/000.jpg"] is None  # no caption file: trains on "lisabp woman"
    keys = bucket_keys(s3_server, bucket)
    assert f"datasets/{dataset['id']}/dataset.zip" in keys
    assert sum(k.endswith(".jpg") and "/thumbs/" in k for k in keys) == 8

    thumb = client.get(dataset["image_list"][0]["thumbnail_url"], headers=headers)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_reg_class_mismatch_is_a_warning(client, headers, tmp_path):
    entries = kohya_entries(images=2, webp=False)
    entries["reg/1_man/r.png"] = image_bytes((9, 9, 9))
    dataset = upload(client, headers, write_zip(tmp_path / "m.zip", entries)).json()
    assert "reg_class_mismatch" in {w["code"] for w in dataset["warnings"]}


def test_unsafe_or_empty_zips_are_refused_and_store_nothing(client, headers, tmp_path, s3_server, bucket):
    bad = write_zip(tmp_path / "bad.zip", {"img/2_x y/a.png": image_bytes((1, 2, 3)), "../evil.png": b"x"})
    response = upload(client, headers, bad)
    assert response.status_code == 422 and response.json()["error"]["details"]["entry"] == "../evil.png"
    only_tiny = write_zip(tmp_path / "tiny.zip", {"img/2_x y/a.png": image_bytes((1, 2, 3), size=(4, 4))})
    response = upload(client, headers, only_tiny)
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_images"
    assert "img/2_x y/a.png" in response.json()["error"]["message"]
    bad_options = upload(client, headers, write_zip(tmp_path / "ok.zip", kohya_entries()), {"repeats": 0})
    assert bad_options.status_code == 422
    assert bad_options.json()["error"]["details"]["fields"][0]["field"] == "options.repeats"
    assert bucket_keys(s3_server, bucket) == []
    assert client.get("/v1/datasets", headers=headers).json()["items"] == []


def test_corrupt_images_refuse_the_zip_on_both_routes_naming_every_one(
    client, headers, tmp_path, pg_url, s3_server, bucket
):
    """A corrupt image refuses a dataset upload as it refuses a job upload (issue 15), and both name every
    corrupt file at once; nothing is stored by either."""
    folder = "img/2_lisabp woman"
    entries = kohya_entries(images=3, repeats=2, webp=False)
    broken = {f"{folder}/broken{i}.png": b"\x89PNG\r\n\x1a\nnot really" for i in range(3)}
    zip_path = write_zip(tmp_path / "broken.zip", {**entries, **broken})
    with session_scope(pg_url) as session:
        jobs_before = session.query(Job).count()
    stored = upload(client, headers, zip_path)
    with open(zip_path, "rb") as fh:
        job = client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps({"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64})},
        )
    for response in (stored, job):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["details"]["entry"]) == ("corrupt_image", f"{folder}/broken0.png")
        assert [p["file"] for p in error["details"]["problems"]] == sorted(broken)
        assert all(name in error["message"] for name in broken)
    assert stored.json()["error"] == job.json()["error"]
    assert bucket_keys(s3_server, bucket) == []
    assert client.get("/v1/datasets", headers=headers).json()["items"] == []
    with session_scope(pg_url) as session:
        assert session.query(Job).count() == jobs_before


def test_caption_edits_are_revisions(client, headers, tmp_path):
    dataset = upload(
        client, headers, write_zip(tmp_path / "s.zip", kohya_entries(images=3, webp=False))
    ).json()
    url = f"/v1/datasets/{dataset['id']}/captions"
    ids = {i["path"].rsplit("/", 1)[1]: i["id"] for i in dataset["image_list"]}
    edit = {
        "expected_revision": 0,
        "set": [{"image_id": ids["000.jpg"], "caption": "lisabp, woman, red"}],
        "find_replace": [{"find": "color", "replace": "colour"}],
        "add_tags": ["solo"],
        "remove_tags": ["woman"],
    }
    result = client.put(url, headers=headers, json=edit)
    assert result.status_code == 200, result.text
    assert result.json() == {"revision": 1, "changed": 3}
    now = {
        c["path"].rsplit("/", 1)[1]: c["caption"] for c in client.get(url, headers=headers).json()["captions"]
    }
    assert now == {
        "000.jpg": "lisabp, red, solo",
        "001.png": "lisabp, colour 1, solo",
        "002.jpg": "lisabp, colour 2, solo",
    }
    before = client.get(f"{url}?revision=0", headers=headers).json()
    assert {c["path"].rsplit("/", 1)[1]: c["caption"] for c in before["captions"]} == {
        "000.jpg": None,
        "001.png": "lisabp, woman, color 1",
        "002.jpg": "lisabp, woman, color 2",
    }
    stale = client.put(url, headers=headers, json={"expected_revision": 0, "add_tags": ["x"]})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "caption_revision_conflict"
    unknown = client.put(url, headers=headers, json={"set": [{"image_id": "nope", "caption": "x"}]})
    assert unknown.status_code == 422 and unknown.json()["error"]["details"]["image_id"] == "nope"
    tags = client.get(f"/v1/datasets/{dataset['id']}/tags", headers=headers).json()
    assert tags[:2] == [{"tag": "lisabp", "count": 3}, {"tag": "solo", "count": 3}]


def test_job_from_dataset_pins_its_caption_revision(client, headers, tmp_path, s3_server, bucket, pg_url):
    dataset = upload(
        client, headers, write_zip(tmp_path / "s.zip", kohya_entries(images=3, repeats=2))
    ).json()
    config = {
        "base_model": "tiny-sd15",
        "resolution": 64,
        "epochs": 2,
        "mixed_precision": "no",
        "enable_bucket": False,
    }
    created = client.post("/v1/jobs", headers=headers, json={"dataset_id": dataset["id"], "config": config})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["plan"]["images"] == 3 and job["plan"]["total_steps"] == 12
    snapshot_key = f"jobs/{job['id']}/captions.json"
    assert snapshot_key in bucket_keys(s3_server, bucket)
    body = s3_server.client().get_object(Bucket=bucket, Key=snapshot_key)["Body"].read()
    snapshot = json.loads(body)
    assert snapshot["revision"] == 0 and snapshot["dataset_id"] == dataset["id"]
    # later edits don't touch what the job trains on
    client.put(f"/v1/datasets/{dataset['id']}/captions", headers=headers, json={"add_tags": ["later"]})
    assert (
        json.loads(s3_server.client().get_object(Bucket=bucket, Key=snapshot_key)["Body"].read()) == snapshot
    )

    # deleting is refused while the job is unfinished, allowed after
    refused = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers)
    assert refused.status_code == 409 and refused.json()["error"]["details"]["jobs"] == [job["id"]]
    with session_scope(pg_url) as session:
        session.get(Job, job["id"]).status = JobStatus.succeeded
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=headers).status_code == 404
    assert not [k for k in bucket_keys(s3_server, bucket) if k.startswith(f"datasets/{dataset['id']}/")]
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).status_code == 200


def test_unknown_dataset_id_is_422_naming_the_field(client, headers):
    response = client.post(
        "/v1/jobs", headers=headers, json={"dataset_id": "nope", "config": {"base_model": "tiny-sd15"}}
    )
    assert response.status_code == 422 and response.json()["error"]["details"]["field"] == "dataset_id"


def test_caption_lengths_out_of_order_are_a_422_naming_the_field(client, headers):
    """min_length above the default max_length was a 500 (issue 15): refused while the body is read,
    before the dataset is looked up, so any id shows it."""
    for body in ({"min_length": 306}, {"min_length": 306, "max_length": 75}):
        response = client.post(
            "/v1/datasets/any-id/caption", headers=headers, json={"method": "blip", **body}
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["details"]["fields"] == [
            {"field": "max_length", "message": "Value error, must be at least min_length (306); it is 75"}
        ]
    ordered = {"method": "blip", "min_length": 30, "max_length": 30}
    assert client.post("/v1/datasets/any-id/caption", headers=headers, json=ordered).status_code == 404


def test_flat_dataset_fixes_repeats_for_its_jobs(client, headers, tmp_path):
    flat = {f"{i}.png": image_bytes((i * 40, 0, 0)) for i in range(3)}
    dataset = upload(
        client,
        headers,
        write_zip(tmp_path / "f.zip", flat),
        {"repeats": 4, "trigger_word": "zkz", "class_word": "dog"},
    ).json()
    assert dataset["subsets"][0]["repeats"] == 4
    config = {
        "base_model": "tiny-sd15",
        "resolution": 64,
        "epochs": 1,
        "mixed_precision": "no",
        "enable_bucket": False,
    }
    job = client.post(
        "/v1/jobs", headers=headers, json={"dataset_id": dataset["id"], "config": config}
    ).json()
    assert job["plan"]["total_steps"] == 12 and job["config"]["repeats"] == 4
    assert job["config"]["trigger_word"] == "zkz"
    conflict = client.post(
        "/v1/jobs", headers=headers, json={"dataset_id": dataset["id"], "config": {**config, "repeats": 2}}
    )
    assert conflict.status_code == 422 and "config.repeats" in conflict.json()["error"]["message"]


def test_other_owner_cannot_see_or_use_a_dataset(client, headers, pg_url, tmp_path):
    dataset = upload(client, headers, write_zip(tmp_path / "s.zip", kohya_entries())).json()
    with session_scope(pg_url) as session:
        other = {"Authorization": f"Bearer {create_api_key(session, owner='mallory')}"}
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=other).status_code == 404
    used = client.post(
        "/v1/jobs", headers=other, json={"dataset_id": dataset["id"], "config": {"base_model": "tiny-sd15"}}
    )
    assert used.status_code == 422


def test_zip_with_wrapper_and_junk_is_read(client, headers, tmp_path):
    path = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in kohya_entries(images=2, webp=False).items():
            archive.writestr(f"mydata/{name}", data)
        archive.writestr("__MACOSX/mydata/._x.png", b"junk")
    dataset = upload(client, headers, path).json()
    assert dataset["images"] == 2 and dataset["subsets"][0]["folder"] == "mydata/img/2_lisabp woman"


def test_caption_method_auto_follows_the_family(client, headers, tmp_path):
    dataset = upload(client, headers, write_zip(tmp_path / "a.zip", kohya_entries(images=2))).json()
    url = f"/v1/datasets/{dataset['id']}/caption"
    tiny = {"florence2_model": "tiny-florence2", "wd14_model": "tiny-wd14"}  # captioners a worker has
    job = client.post(url, headers=headers, json={"method": "auto", "model_family": "flux1", **tiny})
    assert job.status_code == 201, job.text
    config = job.json()["config"]
    assert (config["method"], config["florence2_task"]) == ("florence2", "<DETAILED_CAPTION>")
    assert "model_family" not in config
    tags = client.post(url, headers=headers, json={"method": "auto", "model_family": "sdxl", **tiny}).json()
    assert tags["config"]["method"] == "wd14"
    # no family to choose from, or an option the chosen captioner cannot take: a 422 naming the field
    for body, field in [
        ({"method": "auto"}, "method"),
        ({"method": "auto", "model_family": "flux1", "instruction": "Describe it."}, "instruction"),
        ({"method": "florence2", "caption_length": 1}, "caption_length"),
    ]:
        refused = client.post(url, headers=headers, json=body)
        assert refused.status_code == 422, refused.text
        assert [f["field"] for f in refused.json()["error"]["details"]["fields"]] == [field]


def test_caption_job_records_its_captioner_and_a_cancel_changes_nothing(
    client, headers, env, tmp_path, monkeypatch
):
    from tests.support.stack import settings_from_env
    from worker.jobs.runner import ClaimedRun, JobRunner

    entries = {k: v for k, v in kohya_entries(images=3, repeats=2).items() if not k.endswith(".txt")}
    dataset = upload(client, headers, write_zip(tmp_path / "v.zip", entries)).json()
    url = f"/v1/datasets/{dataset['id']}"
    body = {
        "method": "florence2",
        "florence2_model": "tiny-florence2",
        "trigger_placement": "subject",
        "batch_size": 1,
    }
    runner = JobRunner(settings_from_env(env))

    # canceled after the first of three batches: no revision, no caption changed
    polls = iter([False, True])
    monkeypatch.setattr(ClaimedRun, "must_stop", lambda self: next(polls, True))
    canceled = client.post(f"{url}/caption", headers=headers, json=body).json()
    runner.run(canceled["id"])
    job = client.get(f"/v1/jobs/{canceled['id']}", headers=headers).json()
    assert (job["status"], job["caption_revision"]) == ("canceled", None)
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (1, 3)  # one image was captioned
    captions = client.get(f"{url}/captions", headers=headers).json()
    assert captions["revision"] == 0 and {c["caption"] for c in captions["captions"]} == {None}
    assert captions["source"] == "upload"

    monkeypatch.setattr(ClaimedRun, "must_stop", lambda self: False)
    done = client.post(f"{url}/caption", headers=headers, json=body).json()
    runner.run(done["id"])
    job = client.get(f"/v1/jobs/{done['id']}", headers=headers).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["plan"]["captioner"] == {"method": "florence2", "model": "tiny-florence2"}
    captions = client.get(f"{url}/captions", headers=headers).json()
    assert captions["revision"] == 1 and captions["source"] == "florence2"
    assert {c["caption"] for c in captions["captions"]} == {"lisabp woman in red."}
    captioner = captions["captioner"]
    assert (captioner["method"], captioner["model"]) == ("florence2", "tiny-florence2")
    assert captioner["options"]["trigger_placement"] == "subject"
    assert captioner["options"]["florence2_task"] == "<DETAILED_CAPTION>"


def test_training_captioning_auto_follows_the_base_models_family(client, headers, flux_model):
    counts = {"subsets": [{"folder": "img/6_lisabp woman", "images": 8}]}
    auto = {"method": "auto", "trigger_placement": "first"}
    for base_model, method in [("tiny-sd15", "wd14"), (flux_model, "florence2")]:
        config = {"base_model": base_model, "resolution": 512, "captioning": auto}
        planned = client.post("/v1/plan", headers=headers, json={"config": config, "counts": counts})
        assert planned.status_code == 200, planned.text
        captioning = planned.json()["config"]["captioning"]
        assert (captioning["method"], captioning["trigger_placement"]) == (method, "first")
    unfit = {"base_model": flux_model, "captioning": {**auto, "instruction": "Describe it."}}
    refused = client.post("/v1/plan", headers=headers, json={"config": unfit, "counts": counts})
    assert refused.status_code == 422, refused.text
    fields = [f["field"] for f in refused.json()["error"]["details"]["fields"]]
    assert fields == ["config.captioning.instruction"]
