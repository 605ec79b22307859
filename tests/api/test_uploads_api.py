"""Datasets that do not pass through the API: zips PUT or form-POSTed straight to storage (POST /v1/uploads,
then `upload_id`) and zips the service fetches (`dataset_url`), against real Postgres, Redis and the S3 test
server, and the embedded mode's local store. Each must end as a multipart upload of the same zip does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from shared.datasets.direct_uploads import upload_key
from shared.db.keys import create_api_key
from shared.db.migrate import upgrade
from shared.db.models import Upload, utcnow
from shared.db.session import session_scope
from shared.jobs.reconciler import Reconciler, ReconcileReport
from shared.settings import Settings
from tests.support import services
from tests.support.datasets import image_bytes, kohya_entries, write_zip
from tests.support.stack import bucket_keys, settings_from_env

CONFIG = {
    "base_model": "tiny-sd15",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "mixed_precision": "no",
}
BAD_ENTRY = "../evil.png"


def good_zip(tmp_path: Path) -> Path:
    return write_zip(tmp_path / "set.zip", kohya_entries(images=4, repeats=3, with_reg=True))


def bad_zip(tmp_path: Path) -> Path:
    return write_zip(tmp_path / "bad.zip", {"img/2_x y/a.png": image_bytes((1, 2, 3)), BAD_ENTRY: b"x"})


def new_upload(client: TestClient, headers: dict, filename: str = "set.zip") -> dict:
    response = client.post("/v1/uploads", headers=headers, json={"filename": filename})
    assert response.status_code == 201, response.text
    return response.json()


def put_file(upload: dict, zip_path: Path, http=httpx) -> httpx.Response:  # noqa: ANN001
    """The client's side of a presigned PUT: the URL and headers as given, the file as the body (`http`: the
    TestClient, for the embedded mode's URL on the in-process API)."""
    assert upload["method"] == "PUT"
    timeout = {"timeout": 30} if http is httpx else {}  # (the TestClient takes none)
    return http.put(upload["url"], content=zip_path.read_bytes(), headers=upload["headers"], **timeout)


def post_form(upload: dict, data: bytes, http=httpx, fields: dict | None = None) -> httpx.Response:  # noqa: ANN001
    """The browser's side of the `post` form: its fields as given (or `fields`), then the zip as `file`."""
    timeout = {"timeout": 30} if http is httpx else {}
    form = upload["post"]["fields"] if fields is None else fields
    files = {"file": ("set.zip", data, "application/zip")}
    return http.post(upload["post"]["url"], data=form, files=files, **timeout)


def uploaded(client: TestClient, headers: dict, zip_path: Path, http=httpx) -> str:  # noqa: ANN001
    upload = new_upload(client, headers, zip_path.name)
    put = put_file(upload, zip_path, http)
    assert put.status_code == 200, put.text
    return upload["upload_id"]


def multipart_dataset(client: TestClient, headers: dict, zip_path: Path) -> dict:
    with open(zip_path, "rb") as fh:
        response = client.post("/v1/datasets", headers=headers, files={"dataset": (zip_path.name, fh)})
    assert response.status_code == 201, response.text
    return response.json()


def multipart_job(client: TestClient, headers: dict, zip_path: Path) -> dict:
    with open(zip_path, "rb") as fh:
        response = client.post(
            "/v1/jobs",
            headers=headers,
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"config": json.dumps(CONFIG)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def dataset_report(dataset: dict) -> dict:
    """What a dataset says of its zip: all of it but its ids and time."""
    kept = {k: v for k, v in dataset.items() if k not in ("id", "created_at", "image_list")}
    kept["image_list"] = [
        {k: v for k, v in image.items() if k not in ("id", "thumbnail_url")}
        for image in dataset["image_list"]
    ]
    return kept


def job_report(job: dict) -> dict:
    return {k: job[k] for k in ("kind", "status", "config", "plan", "dataset", "dataset_id", "progress")}


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


def nothing_stored(client: TestClient, headers: dict, s3_server, bucket: str) -> None:  # noqa: ANN001
    assert bucket_keys(s3_server, bucket) == []
    assert client.get("/v1/jobs", headers=headers).json()["items"] == []
    assert client.get("/v1/datasets", headers=headers).json()["items"] == []


# -- uploads through a presigned PUT ---------------------------------------------------------------------


def test_a_presigned_put_then_upload_id_makes_the_dataset_a_multipart_upload_makes(
    client, headers, tmp_path, s3_server, bucket
):
    zip_path = good_zip(tmp_path)
    upload = new_upload(client, headers, "set.zip")
    assert upload["url"].startswith(s3_server.url) and upload["headers"] == {
        "Content-Type": "application/zip"
    }
    assert upload_key(upload["upload_id"]) in upload["url"]
    assert put_file(upload, zip_path).status_code == 200
    assert bucket_keys(s3_server, bucket) == [upload_key(upload["upload_id"])]

    response = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
    assert response.status_code == 201, response.text
    by_upload = response.json()
    assert response.headers["location"] == f"/v1/datasets/{by_upload['id']}"
    assert dataset_report(by_upload) == dataset_report(multipart_dataset(client, headers, zip_path))
    keys = bucket_keys(s3_server, bucket)
    assert f"datasets/{by_upload['id']}/dataset.zip" in keys
    assert not [k for k in keys if k.startswith("uploads/")]  # taken: its object is gone

    again = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
    assert again.status_code == 409
    assert error_of(again)["code"] == "upload_used" and error_of(again)["details"]["field"] == "upload_id"


def signed_policy(fields: dict[str, str], secret: str) -> dict:
    """The form's policy, after checking that its SigV4 signature is the one S3 checks it by (so S3 holds
    a client to these conditions; one that edits them is refused)."""
    _, date, region, service, _ = fields["x-amz-credential"].split("/")
    signing = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        signing = hmac.new(signing, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing, fields["policy"].encode(), hashlib.sha256).hexdigest()
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and fields["x-amz-signature"] == expected
    return json.loads(base64.b64decode(fields["policy"]))


def test_a_presigned_post_form_caps_the_size_and_its_upload_makes_the_dataset(
    client, headers, tmp_path, s3_server, bucket
):
    zip_path = good_zip(tmp_path)
    upload = new_upload(client, headers)
    key = upload_key(upload["upload_id"])
    assert upload["method"] == "PUT" and key in upload["url"]  # the PUT is still offered, as it was
    assert upload["post"]["url"] == f"{s3_server.url}/{bucket}" and upload["post"]["fields"]["key"] == key
    conditions = signed_policy(upload["post"]["fields"], s3_server.secret_key)["conditions"]
    assert ["content-length-range", 1, upload["max_bytes"]] in conditions
    assert {"key": key} in conditions and {"bucket": bucket} in conditions  # that key exactly, no other
    assert upload["max_bytes"] == client.app.state.lorabake.settings.max_upload_bytes

    posted = post_form(upload, zip_path.read_bytes())
    assert posted.status_code == 204, posted.text
    assert bucket_keys(s3_server, bucket) == [key]
    response = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
    assert response.status_code == 201, response.text
    assert dataset_report(response.json()) == dataset_report(multipart_dataset(client, headers, zip_path))
    assert not [k for k in bucket_keys(s3_server, bucket) if k.startswith("uploads/")]


def test_upload_id_makes_the_job_a_multipart_upload_makes_as_form_field_or_json(
    client, headers, tmp_path, s3_server, bucket
):
    zip_path = good_zip(tmp_path)
    expected = job_report(multipart_job(client, headers, zip_path))
    form = client.post(
        "/v1/jobs",
        headers=headers,
        data={"upload_id": uploaded(client, headers, zip_path), "config": json.dumps(CONFIG)},
    )
    assert form.status_code == 201, form.text
    assert job_report(form.json()) == expected
    body = client.post(
        "/v1/jobs", headers=headers, json={"upload_id": uploaded(client, headers, zip_path), "config": CONFIG}
    )
    assert body.status_code == 201, body.text
    assert job_report(body.json()) == expected
    jobs = [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["items"]]
    assert sorted(bucket_keys(s3_server, bucket)) == sorted(f"jobs/{j}/dataset.zip" for j in jobs)


def test_a_bad_zip_by_upload_names_the_entry_and_leaves_nothing(client, headers, tmp_path, s3_server, bucket):
    for path, body in (("/v1/jobs", {"config": CONFIG}), ("/v1/datasets", {})):
        upload_id = uploaded(client, headers, bad_zip(tmp_path))
        response = client.post(path, headers=headers, json={"upload_id": upload_id, **body})
        assert response.status_code == 422, response.text
        assert (
            error_of(response)["details"]["entry"] == BAD_ENTRY and BAD_ENTRY in error_of(response)["message"]
        )
        nothing_stored(client, headers, s3_server, bucket)
        again = client.post(path, headers=headers, json={"upload_id": upload_id, **body})
        assert again.status_code == 409 and error_of(again)["code"] == "upload_used"  # a refusal uses it up


def test_another_owners_upload_is_unknown_and_stays_the_owners(client, headers, tmp_path, pg_url):
    upload_id = uploaded(client, headers, good_zip(tmp_path))
    with session_scope(pg_url) as session:
        other = {"Authorization": f"Bearer {create_api_key(session, owner=f'other-{uuid.uuid4().hex[:8]}')}"}
    for path, body in (("/v1/datasets", {}), ("/v1/jobs", {"config": CONFIG})):
        response = client.post(path, headers=other, json={"upload_id": upload_id, **body})
        assert response.status_code == 422
        assert error_of(response)["code"] == "unknown_upload"
        assert error_of(response)["details"]["field"] == "upload_id"
    missing = client.post("/v1/datasets", headers=headers, json={"upload_id": uuid.uuid4().hex})
    assert error_of(missing)["code"] == "unknown_upload"
    assert client.post("/v1/datasets", headers=headers, json={"upload_id": upload_id}).status_code == 201


def test_an_upload_not_put_yet_is_refused_and_stays_usable(client, headers, tmp_path):
    upload = new_upload(client, headers)
    early = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
    assert early.status_code == 422 and error_of(early)["code"] == "upload_not_received"
    assert put_file(upload, good_zip(tmp_path)).status_code == 200
    later = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
    assert later.status_code == 201, later.text


def test_a_dataset_is_named_by_exactly_one_field(client, headers, tmp_path):
    upload_id = uploaded(client, headers, good_zip(tmp_path))
    both = client.post(
        "/v1/jobs",
        headers=headers,
        json={"upload_id": upload_id, "dataset_url": "https://example.com/x.zip", "config": CONFIG},
    )
    assert both.status_code == 422 and error_of(both)["code"] == "conflicting_fields"
    assert error_of(both)["details"]["field"] == "dataset_url"
    with open(good_zip(tmp_path), "rb") as fh:
        form = client.post(
            "/v1/datasets", headers=headers, files={"dataset": ("set.zip", fh)}, data={"upload_id": upload_id}
        )
    assert form.status_code == 422 and error_of(form)["details"]["field"] == "upload_id"
    none = client.post("/v1/datasets", headers=headers, json={"options": {}})
    assert none.status_code == 422 and error_of(none)["details"]["field"] == "upload_id"
    not_text = client.post("/v1/jobs", headers=headers, json={"upload_id": 7, "config": CONFIG})
    assert not_text.status_code == 422 and error_of(not_text)["details"]["field"] == "upload_id"
    # none of these touched the upload
    assert client.post("/v1/datasets", headers=headers, json={"upload_id": upload_id}).status_code == 201


@pytest.mark.parametrize("send", ["put", "post"])
def test_an_upload_over_the_size_cap_is_413_and_deleted(env, headers, tmp_path, s3_server, bucket, send):
    """What catches an oversize zip that storage kept: a PUT's (S3 cannot cap it), and a form's on an S3
    that ignores the policy. Moto (the test server) is one: it keeps a form's file whatever the policy says,
    where AWS answers 400 EntityTooLarge; should it start to refuse, the 204 below fails."""
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_MAX_UPLOAD_BYTES": "2000"}))) as small:
        upload = new_upload(small, headers)
        assert upload["max_bytes"] == 2000
        zip_path = good_zip(tmp_path)
        if send == "put":
            assert put_file(upload, zip_path).status_code == 200  # S3 does not know our cap
        else:
            conditions = signed_policy(upload["post"]["fields"], s3_server.secret_key)["conditions"]
            assert ["content-length-range", 1, 2000] in conditions
            assert post_form(upload, zip_path.read_bytes()).status_code == 204  # moto keeps it anyway
        response = small.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
        assert response.status_code == 413
        assert error_of(response)["code"] == "payload_too_large"
        assert error_of(response)["details"]["field"] == "upload_id"
        nothing_stored(small, headers, s3_server, bucket)


def test_expired_uploads_are_deleted_by_the_reconciler_or_when_used(
    client, headers, tmp_path, pg_url, s3_server, bucket
):
    zip_path = good_zip(tmp_path)
    stale, fresh, late = (uploaded(client, headers, zip_path) for _ in range(3))

    def expire(upload_id: str) -> None:
        with session_scope(pg_url) as session:
            past = utcnow() - timedelta(seconds=1)
            session.execute(update(Upload).where(Upload.id == upload_id).values(expires_at=past))
            session.commit()

    expire(stale)
    state = client.app.state.lorabake
    report = ReconcileReport()
    Reconciler(state.settings, state.sessions, state.dispatcher, state.store).expire_uploads(report)
    assert stale in report.expired_uploads and fresh not in report.expired_uploads
    assert sorted(bucket_keys(s3_server, bucket)) == sorted([upload_key(fresh), upload_key(late)])
    with session_scope(pg_url) as session:
        assert session.scalar(select(Upload.id).where(Upload.id == stale)) is None
    gone = client.post("/v1/datasets", headers=headers, json={"upload_id": stale})
    assert gone.status_code == 422 and error_of(gone)["code"] == "unknown_upload"

    expire(late)  # not swept yet: refused when used, and deleted then
    response = client.post("/v1/datasets", headers=headers, json={"upload_id": late})
    assert response.status_code == 422 and error_of(response)["code"] == "upload_expired"
    assert bucket_keys(s3_server, bucket) == [upload_key(fresh)]


def owner_headers(database_url: str, owner: str) -> dict[str, str]:
    with session_scope(database_url) as session:
        return {"Authorization": f"Bearer {create_api_key(session, owner=owner)}"}


def upload_rows(database_url: str, owner: str) -> int:
    with session_scope(database_url) as session:
        return len(list(session.scalars(select(Upload.id).where(Upload.owner == owner))))


def test_an_owner_holding_max_pending_uploads_gets_429_until_one_is_used_or_expires(env, tmp_path, pg_url):
    settings = settings_from_env({**env, "LORABAKE_MAX_PENDING_UPLOADS": "2"})
    assert settings.max_pending_uploads == 2 and Settings.model_fields["max_pending_uploads"].default == 20
    owner = f"cap-{uuid.uuid4().hex[:8]}"
    headers = owner_headers(pg_url, owner)
    with TestClient(create_app(settings)) as client:
        first, second = new_upload(client, headers), new_upload(client, headers)
        refused = client.post("/v1/uploads", headers=headers, json={})
        assert refused.status_code == 429, refused.text
        assert error_of(refused)["code"] == "too_many_uploads" and "max_pending_uploads 2" in refused.text
        assert error_of(refused)["details"] == {"limit": "max_pending_uploads", "value": 2}
        lifetime = settings.presign_expiry_seconds + settings.upload_grace_seconds  # when `first` expires
        assert 0 < int(refused.headers["retry-after"]) <= lifetime
        assert upload_rows(pg_url, owner) == 2  # the refused one left no row
        new_upload(client, owner_headers(pg_url, f"other-{uuid.uuid4().hex[:8]}"))  # a cap per owner

        assert put_file(first, good_zip(tmp_path)).status_code == 200
        used = client.post("/v1/datasets", headers=headers, json={"upload_id": first["upload_id"]})
        assert used.status_code == 201, used.text
        new_upload(client, headers)  # a used upload no longer counts (its row stays until expiry)
        assert client.post("/v1/uploads", headers=headers).status_code == 429

        with session_scope(pg_url) as session:
            past = utcnow() - timedelta(seconds=1)
            session.execute(update(Upload).where(Upload.id == second["upload_id"]).values(expires_at=past))
            session.commit()
        new_upload(client, headers)  # nor does an expired one, swept or not


# -- dataset_url ------------------------------------------------------------------------------------------


class ZipServer:
    """A local HTTP server with fixed answers per path, counting the requests it got."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                status, headers, body = server.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Location" not in headers and "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if headers.get("Transfer-Encoding") == "chunked":  # no length said: only the count stops it
                    for start in range(0, len(body), 1000):
                        piece = body[start : start + 1000]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                elif status != 302:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ZipServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def zip_server(tmp_path) -> Iterator[ZipServer]:
    good, bad = good_zip(tmp_path).read_bytes(), bad_zip(tmp_path).read_bytes()
    routes = {
        "/files/set.zip": (200, {"Content-Type": "application/zip"}, good),
        "/files/bad.zip": (200, {}, bad),
        "/go": (302, {"Location": "/files/set.zip", "Content-Length": "0"}, b""),
        "/streamed.zip": (200, {"Transfer-Encoding": "chunked"}, good),
    }
    with ZipServer(routes) as server:
        yield server


@pytest.fixture
def private_ok(env) -> Iterator[TestClient]:
    """The API allowed to fetch from this machine (LORABAKE_ALLOW_PRIVATE_URLS), as the local server is."""
    with TestClient(create_app(settings_from_env({**env, "LORABAKE_ALLOW_PRIVATE_URLS": "1"}))) as client:
        yield client


def test_dataset_url_makes_the_dataset_and_job_a_multipart_upload_makes(
    private_ok, headers, tmp_path, zip_server, s3_server, bucket
):
    client, zip_path, url = private_ok, good_zip(tmp_path), f"{zip_server.url}/files/set.zip"
    dataset = client.post("/v1/datasets", headers=headers, json={"dataset_url": f"{zip_server.url}/go"})
    assert dataset.status_code == 201, dataset.text
    expected = dataset_report(multipart_dataset(client, headers, zip_path))
    assert dataset_report(dataset.json()) == {**expected, "name": "go"}  # named after the URL it was given
    assert zip_server.requests == ["/go", "/files/set.zip"]  # the redirect was followed

    job = client.post("/v1/jobs", headers=headers, data={"dataset_url": url, "config": json.dumps(CONFIG)})
    assert job.status_code == 201, job.text
    assert job_report(job.json()) == job_report(multipart_job(client, headers, zip_path))
    assert f"jobs/{job.json()['id']}/dataset.zip" in bucket_keys(s3_server, bucket)


def test_dataset_url_on_this_machine_is_refused_unless_allowed(
    client, headers, zip_server, s3_server, bucket
):
    for url in (f"{zip_server.url}/files/set.zip", zip_server.url.replace("127.0.0.1", "localhost")):
        response = client.post("/v1/datasets", headers=headers, json={"dataset_url": url})
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "unsafe_url"
        assert error_of(response)["details"] == {
            "field": "dataset_url",
            "setting": "LORABAKE_ALLOW_PRIVATE_URLS",
        }
        assert "LORABAKE_ALLOW_PRIVATE_URLS" in error_of(response)["message"]
    not_http = client.post(
        "/v1/jobs", headers=headers, json={"dataset_url": "file:///etc/passwd", "config": CONFIG}
    )
    assert not_http.status_code == 422 and error_of(not_http)["details"]["field"] == "dataset_url"
    assert zip_server.requests == []  # refused before any connection
    nothing_stored(client, headers, s3_server, bucket)


def test_dataset_url_over_the_size_cap_is_413_and_stores_nothing(env, headers, zip_server, s3_server, bucket):
    small = settings_from_env(
        {**env, "LORABAKE_ALLOW_PRIVATE_URLS": "1", "LORABAKE_MAX_UPLOAD_BYTES": "2000"}
    )
    with TestClient(create_app(small)) as client:
        for path in ("/files/set.zip", "/streamed.zip"):  # with a Content-Length, and without one
            response = client.post(
                "/v1/datasets", headers=headers, json={"dataset_url": zip_server.url + path}
            )
            assert response.status_code == 413, response.text
            assert error_of(response)["code"] == "payload_too_large"
            assert error_of(response)["details"]["field"] == "dataset_url"
        nothing_stored(client, headers, s3_server, bucket)
    assert (Path(small.work_dir) / "uploads").exists() and not list(
        (Path(small.work_dir) / "uploads").iterdir()
    )


def test_dataset_url_that_fails_or_holds_a_bad_zip_is_4xx_naming_it(
    private_ok, headers, zip_server, s3_server, bucket
):
    missing = private_ok.post(
        "/v1/jobs", headers=headers, json={"dataset_url": f"{zip_server.url}/nope.zip", "config": CONFIG}
    )
    assert missing.status_code == 422
    assert error_of(missing)["details"] == {"field": "dataset_url", "status": 404}
    assert "404" in error_of(missing)["message"]
    bad = private_ok.post(
        "/v1/datasets", headers=headers, json={"dataset_url": f"{zip_server.url}/files/bad.zip"}
    )
    assert bad.status_code == 422 and error_of(bad)["details"]["entry"] == BAD_ENTRY
    nothing_stored(private_ok, headers, s3_server, bucket)


# -- the embedded mode: a local folder store, the API takes the PUT ---------------------------------------


@contextmanager
def embedded(tmp_path: Path, models_dir: Path, **env: str) -> Iterator[tuple[TestClient, dict, Settings]]:
    """The embedded mode's API (SQLite, a local folder store) with one owner's key headers."""
    data = tmp_path / "data"
    data.mkdir()
    settings = settings_from_env(
        {
            "LORABAKE_DATA_DIR": str(data),
            "LORABAKE_MODELS_DIR": str(models_dir),
            "LORABAKE_RECONCILE_INTERVAL_SECONDS": "0",
            **{f"LORABAKE_{k.upper()}": v for k, v in env.items()},
        }
    )
    assert settings.storage_backend == "local" and settings.database_url.startswith("sqlite")
    upgrade(settings.database_url)
    services.report_models(settings.database_url, models_dir)
    headers = owner_headers(settings.database_url, "me")
    with TestClient(create_app(settings)) as client:
        yield client, headers, settings


def test_embedded_mode_takes_the_put_itself(tmp_path, models_dir):
    zip_path = good_zip(tmp_path)
    with embedded(tmp_path, models_dir) as (client, headers, settings):
        objects = settings.storage_dir
        upload = new_upload(client, headers)
        assert upload["url"].startswith(f"http://testserver/storage/uploads/{upload['upload_id']}?token=")
        forged = client.put(
            upload["url"].split("?")[0] + "?token=guess",
            content=zip_path.read_bytes(),
            headers=upload["headers"],
        )
        assert forged.status_code == 403 and not (objects / "uploads").exists()
        put = client.put(upload["url"], content=zip_path.read_bytes(), headers=upload["headers"])
        assert put.status_code == 200, put.text
        assert (objects / upload_key(upload["upload_id"])).read_bytes() == zip_path.read_bytes()

        dataset = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
        assert dataset.status_code == 201, dataset.text
        assert dataset_report(dataset.json()) == dataset_report(multipart_dataset(client, headers, zip_path))
        assert not (objects / upload_key(upload["upload_id"])).exists()
        reused = client.put(upload["url"], content=zip_path.read_bytes(), headers=upload["headers"])
        assert reused.status_code == 409 and error_of(reused)["code"] == "upload_used"

        upload_id = uploaded(client, headers, zip_path, http=client)
        job = client.post("/v1/jobs", headers=headers, json={"upload_id": upload_id, "config": CONFIG})
        assert job.status_code == 201, job.text
        assert (objects / "jobs" / job.json()["id"] / "dataset.zip").read_bytes() == zip_path.read_bytes()
        assert not list((objects / "uploads").rglob("*.zip"))


BOUNDARY = "lorabake-test-boundary"


def form_body(fields: dict[str, str], data: bytes) -> bytes:
    """A multipart/form-data body by hand: the fields, then `file` (to send without a Content-Length)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="set.zip"\r\n\r\n'
    return b"".join(parts) + head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def streamed(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """The body in pieces, so it goes chunked, no Content-Length: only counting what arrives can stop it."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def leaves_nothing(settings: Settings) -> None:
    assert not list((settings.storage_dir / "uploads").rglob("*"))  # no object, not even a temp file
    assert not list((settings.work_dir / "uploads").iterdir())  # the partial file went as well


def test_embedded_mode_takes_the_form_post_and_refuses_one_over_the_limit(tmp_path, models_dir):
    zip_path = good_zip(tmp_path)  # once: a zip written again may differ (its entries' times)
    data = zip_path.read_bytes()
    with embedded(tmp_path, models_dir, max_upload_bytes=str(len(data))) as (client, headers, settings):
        (settings.work_dir / "uploads").mkdir(parents=True, exist_ok=True)
        upload = new_upload(client, headers)
        key = upload_key(upload["upload_id"])
        assert upload["post"] == {
            "url": upload["url"],
            "fields": {"key": key, "Content-Type": "application/zip"},
        }
        assert upload["max_bytes"] == len(data)

        too_big = post_form(upload, data + b"\0", http=client)  # one byte over
        assert too_big.status_code == 413, too_big.text
        assert (
            error_of(too_big)["code"] == "payload_too_large"
            and str(len(data)) in error_of(too_big)["message"]
        )
        assert error_of(too_big)["details"] == {"field": "file", "limit_bytes": len(data)}
        leaves_nothing(settings)
        chunked = client.post(
            upload["post"]["url"],
            content=streamed(form_body(upload["post"]["fields"], data + b"\0")),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413 and error_of(chunked)["details"]["field"] == "file"
        leaves_nothing(settings)

        forged = post_form(
            {"post": {**upload["post"], "url": upload["url"].split("?")[0] + "?token=x"}}, data, client
        )
        assert forged.status_code == 403 and error_of(forged)["details"]["field"] == "token"
        leaves_nothing(settings)

        posted = post_form(upload, data, http=client)  # exactly the limit: taken (refusals left it usable)
        assert posted.status_code == 200, posted.text
        assert posted.json() == {"upload_id": upload["upload_id"], "size_bytes": len(data)}
        assert (settings.storage_dir / key).read_bytes() == data
        dataset = client.post("/v1/datasets", headers=headers, json={"upload_id": upload["upload_id"]})
        assert dataset.status_code == 201, dataset.text
        by_put = uploaded(client, headers, zip_path, http=client)  # (a multipart one is over the limit)
        expected = client.post("/v1/datasets", headers=headers, json={"upload_id": by_put}).json()
        assert dataset_report(dataset.json()) == dataset_report(expected)
        again = post_form(upload, data, http=client)
        assert again.status_code == 409 and error_of(again)["code"] == "upload_used"


def test_embedded_mode_refuses_a_bad_form_naming_the_field(tmp_path, models_dir):
    data = good_zip(tmp_path).read_bytes()
    with embedded(tmp_path, models_dir) as (client, headers, settings):
        (settings.work_dir / "uploads").mkdir(parents=True, exist_ok=True)
        upload = new_upload(client, headers)
        fields = upload["post"]["fields"]
        other_key = upload_key(uuid.uuid4().hex)
        for form, body, field in (
            ({**fields, "key": other_key}, data, "key"),  # another upload's key
            ({"Content-Type": "application/zip"}, data, "key"),  # none
            (fields, b"", "file"),  # an empty file
        ):
            response = post_form(upload, body, http=client, fields=form)
            assert response.status_code == 422, response.text
            assert error_of(response)["details"]["field"] == field
            leaves_nothing(settings)
        no_file = client.post(upload["post"]["url"], data=fields, files={"other": ("x", b"x")})
        assert no_file.status_code == 422 and error_of(no_file)["details"]["field"] == "file"
        cut_off = form_body(fields, data)[:-20]  # the body ends inside the file
        truncated = client.post(
            upload["post"]["url"],
            content=cut_off,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert truncated.status_code == 422 and error_of(truncated)["details"]["field"] == "file"
        not_a_form = client.post(
            upload["post"]["url"], content=data, headers={"Content-Type": "application/zip"}
        )
        assert not_a_form.status_code == 422 and error_of(not_a_form)["details"]["field"] == "body"
        leaves_nothing(settings)
        # none of these used the upload up
        assert post_form(upload, data, http=client).status_code == 200


def test_embedded_mode_caps_pending_uploads(tmp_path, models_dir):
    with embedded(tmp_path, models_dir, max_pending_uploads="1") as (client, headers, settings):
        new_upload(client, headers)
        refused = client.post("/v1/uploads", headers=headers)
        assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_uploads"
        lifetime = (
            settings.presign_expiry_seconds + settings.upload_grace_seconds
        )  # (SQLite's times read back)
        assert 0 < int(refused.headers["retry-after"]) <= lifetime
