"""Datasets that do not go through the API's request body: a zip sent straight to storage
(`create_upload`/`put_upload`/`upload_direct`, then `upload_id`), and a `dataset_url` the server fetches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorabake.client import LorabakeAPIError, LorabakeClient, LorabakeClientError, Upload
from lorabake.client.http import same_origin
from tests.client.conftest import CONFIG
from tests.client.receiver import Receiver


@pytest.fixture(scope="module")
def dataset_zip(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("zipped") / "lisa"
    return Path(shutil.make_archive(str(base), "zip", dataset_dir))


def test_a_direct_upload_makes_one_dataset(api: LorabakeClient, dataset_dir: Path):
    upload = api.create_upload(filename="lisa-direct.zip")
    # the embedded mode's upload URL is the API's own, its token the credential
    assert same_origin(upload.url, api.base_url) and f"/storage/uploads/{upload.upload_id}?" in upload.url
    assert upload.method == "PUT" and upload.headers == {"Content-Type": "application/zip"}
    assert upload.expires_at is not None and upload.url_expires_at is not None

    with pytest.raises(LorabakeAPIError) as early:
        api.upload_dataset(upload_id=upload.upload_id)
    assert (early.value.status, early.value.code, early.value.fields) == (
        422,
        "upload_not_received",
        ["upload_id"],
    )

    api.put_upload(upload, dataset_dir)  # a folder: zipped on the fly
    dataset = api.upload_dataset(upload_id=upload.upload_id, name="sent to storage")
    assert (dataset.name, dataset.images, dataset.subsets[0]["folder"]) == (
        "sent to storage",
        4,
        "img/2_lisabp woman",
    )
    with pytest.raises(LorabakeAPIError) as again:
        api.upload_dataset(upload_id=upload.upload_id)
    assert (again.value.status, again.value.code) == (409, "upload_used")
    api.delete_dataset(dataset.id)


def test_upload_direct_then_a_wrong_token_is_refused(api: LorabakeClient, dataset_zip: Path):
    upload_id = api.upload_direct(dataset_zip)
    dataset = api.upload_dataset(upload_id=upload_id)
    assert dataset.name == "lisa.zip" and dataset.images == 4  # named after the file sent
    api.delete_dataset(dataset.id)

    upload = api.create_upload()
    forged = upload.model_copy(update={"url": upload.url.split("?")[0] + "?token=forged"})
    with pytest.raises(LorabakeAPIError) as refused:
        api.put_upload(forged, dataset_zip)
    assert (refused.value.status, refused.value.code) == (403, "invalid_upload_url")


def test_a_storage_host_gets_the_zip_and_its_headers_but_not_the_key(
    api: LorabakeClient, dataset_zip: Path, receiver: Receiver
):
    """As with S3's presigned URL: the signature is in the URL, so the API key must not go along."""
    upload = Upload(
        upload_id="a" * 32,
        url=receiver.url("/bucket/uploads/aaaa/dataset.zip?X-Amz-Signature=abc"),
        headers={"Content-Type": "application/zip"},
    )
    api.put_upload(upload, dataset_zip)
    (put,) = receiver.requests("/bucket/uploads/aaaa/dataset.zip", "PUT")
    assert put.body == dataset_zip.read_bytes() and put.query == "X-Amz-Signature=abc"
    assert put.headers["content-type"] == "application/zip"
    assert put.headers["content-length"] == str(dataset_zip.stat().st_size)  # S3 takes no chunked PUT
    assert "authorization" not in put.headers

    receiver.answers["/denied"] = 403
    with pytest.raises(LorabakeAPIError) as denied:
        api.put_upload(upload.model_copy(update={"url": receiver.url("/denied")}), dataset_zip)
    assert (denied.value.status, denied.value.code) == (403, "http_403")


def test_put_upload_to_a_presigned_s3_url(api: LorabakeClient, dataset_zip: Path, s3_server):  # noqa: ANN001
    s3 = s3_server.client()
    s3.create_bucket(Bucket="client-uploads")
    url = s3.generate_presigned_url(
        "put_object",
        Params={"Bucket": "client-uploads", "Key": "uploads/x/dataset.zip", "ContentType": "application/zip"},
    )
    api.put_upload(Upload(upload_id="x", url=url, headers={"Content-Type": "application/zip"}), dataset_zip)
    stored = s3.get_object(Bucket="client-uploads", Key="uploads/x/dataset.zip")
    assert stored["Body"].read() == dataset_zip.read_bytes()


def test_a_dataset_url_is_fetched_by_the_server(api: LorabakeClient, dataset_zip: Path, receiver: Receiver):
    receiver.files["/data/lisa-remote.zip"] = dataset_zip.read_bytes()
    dataset = api.upload_dataset(dataset_url=receiver.url("/data/lisa-remote.zip"))
    assert (dataset.name, dataset.images) == ("lisa-remote.zip", 4)
    assert len(receiver.requests("/data/lisa-remote.zip", "GET")) == 1
    api.delete_dataset(dataset.id)

    with pytest.raises(LorabakeAPIError) as missing:
        api.submit_job(CONFIG, dataset_url=receiver.url("/data/nothing.zip"))
    assert (missing.value.status, missing.value.code, missing.value.fields) == (
        422,
        "dataset_url_failed",
        ["dataset_url"],
    )


def test_exactly_one_dataset_source(api: LorabakeClient, dataset_dir: Path):
    jobs_before = len(api.list_jobs(limit=100).items)
    for sources in (
        {},
        {"dataset": dataset_dir, "upload_id": "a" * 32},
        {"dataset_id": "a" * 32, "dataset_url": "https://example.com/x.zip"},
    ):
        with pytest.raises(LorabakeClientError, match="exactly one of"):
            api.submit_job(CONFIG, **sources)
    with pytest.raises(LorabakeClientError, match="exactly one of"):
        api.upload_dataset(dataset_dir, dataset_url="https://example.com/x.zip")
    with pytest.raises(LorabakeClientError, match="needs a webhook"):
        api.submit_job(CONFIG, dataset=dataset_dir, webhook_events=["job.succeeded"])
    with pytest.raises(LorabakeAPIError) as unknown:
        api.submit_job(CONFIG, upload_id="b" * 32)
    assert (unknown.value.status, unknown.value.code) == (422, "unknown_upload")
    assert len(api.list_jobs(limit=100).items) == jobs_before
