"""Malformed values anywhere a client can put them are 4xx naming what is wrong, never a 500, and a refused
request stores nothing: NUL bytes, garbage cursors and ids, a bad Last-Event-ID."""

from __future__ import annotations

import json

import pytest

from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import bucket_keys


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
@pytest.mark.parametrize("cursor", ["%00", "not-a-cursor", "a" * 32, "%ff%fe"])
def test_a_cursor_that_names_no_row_of_yours_is_a_422(client, headers, path, cursor):
    response = client.get(f"{path}?cursor={cursor}", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["field"] == "cursor"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/%00",
        "/v1/jobs/x%00y/artifacts",
        "/v1/jobs/../etc",
        f"/v1/jobs/{'0' * 32}/artifacts/%00",
        "/v1/datasets/%00",
        f"/v1/datasets/{'0' * 32}/images/%00/thumbnail",
        "/v1/jobs/%00/events",
    ],
)
def test_an_id_that_cannot_exist_is_a_404(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


def test_a_last_event_id_that_is_no_event_id_is_a_422(client, headers, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        job = client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": ("s.zip", fh)},
            data={"config": json.dumps({"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64})},
        ).json()
    for bad in ("abc", "-1", "1e9", "9" * 40):
        response = client.get(f"/v1/jobs/{job['id']}/events", headers={**headers, "Last-Event-ID": bad})
        assert response.status_code == 422, bad
        assert response.json()["error"]["details"]["field"] == "Last-Event-ID"


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("config", {"base_model": "tiny\u0000sd15"}, "config.base_model"),
        ("config", {"base_model": "tiny-sd15", "sample_prompts": ["a\u0000b"]}, "config.sample_prompts.0"),
    ],
)
def test_nul_characters_in_a_config_are_a_422_naming_the_field(
    client, headers, tmp_path, s3_server, bucket, field, value, named
):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        response = client.post(
            "/v1/jobs", headers=headers, files={"dataset": ("s.zip", fh)}, data={field: json.dumps(value)}
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["fields"][0]["field"] == named
    assert bucket_keys(s3_server, bucket) == []


def test_nul_characters_in_dataset_options_and_json_bodies_are_refused(
    client, headers, tmp_path, s3_server, bucket
):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        response = client.post(
            "/v1/datasets",
            headers=headers,
            files={"dataset": ("s.zip", fh)},
            data={"options": json.dumps({"name": "lisa\u0000"})},
        )
    assert (
        response.status_code == 422
        and response.json()["error"]["details"]["fields"][0]["field"] == "options.name"
    )
    response = client.post(
        "/v1/plan",
        headers=headers,
        json={
            "config": {"base_model": "tiny-sd15"},
            "counts": {"subsets": [{"folder": "img/1_a\u0000 b", "images": 1}]},
        },
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"][0]["field"] == "counts.subsets.0.folder"
    assert bucket_keys(s3_server, bucket) == []


def test_a_file_name_with_control_characters_is_kept_without_them(client, headers, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    config = json.dumps({"base_model": "tiny-sd15", "resolution": 64, "min_bucket_reso": 64})
    boundary = "lorabake-boundary"
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="config"\r\n\r\n{config}\r\n'.encode(),
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="dataset"; filename="my\x00set\x07.zip"\r\n',
            b"Content-Type: application/zip\r\n\r\n",
            zip_path.read_bytes(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    response = client.post(
        "/v1/jobs",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )
    assert response.status_code == 201, response.text
    assert response.json()["dataset"]["filename"] == "myset.zip"


def test_nul_in_a_caption_edit_is_a_4xx(client, headers, tmp_path):
    zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
    with open(zip_path, "rb") as fh:
        dataset = client.post("/v1/datasets", headers=headers, files={"dataset": ("s.zip", fh)}).json()
    image = dataset["image_list"][0]["id"]
    response = client.put(
        f"/v1/datasets/{dataset['id']}/captions",
        headers=headers,
        json={"set": [{"image_id": image, "caption": "lisabp\u0000"}]},
    )
    assert response.status_code == 422, response.text
    captions = client.get(f"/v1/datasets/{dataset['id']}/captions", headers=headers).json()
    assert captions["revision"] == dataset["caption_revision"]


def test_each_answer_carries_its_request_id_and_errors_are_logged_with_it(client, headers, caplog):
    caplog.set_level("INFO", logger="lorabake.api")
    ok = client.get("/v1/jobs", headers={**headers, "X-Request-ID": "trace-123"})
    missing = client.get(f"/v1/jobs/{'0' * 32}", headers=headers)
    assert ok.headers["x-request-id"] == "trace-123"
    rid = missing.headers["x-request-id"]
    assert len(rid) == 32
    lines = [r.getMessage() for r in caplog.records if r.name == "lorabake.api"]
    assert any("-> 404 in" in line and rid in line for line in lines)
    assert not any(
        "trace-123" in line for line in lines
    )  # a 200 is not logged by default (ACCESS_LOG=errors)
