"""LorabakeClient against a real `lorabake serve`: error mapping, pagination, datasets, plan, presets, the
event stream across a dropped connection, and downloads resumed (S3 ranges) and checked (sha256)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorabake.client import (
    Artifact,
    ChecksumMismatchError,
    LorabakeAPIError,
    LorabakeClient,
    LorabakeConnectionError,
    sha256_file,
    verify_file,
)
from tests.client.conftest import CONFIG, CanceledRun, Served, Watched
from tests.support import services


def test_unknown_job_is_a_not_found_error(api: LorabakeClient):
    with pytest.raises(LorabakeAPIError) as caught:
        api.get_job("f" * 32)
    error = caught.value
    assert (error.status, error.code, error.details) == (404, "not_found", {"job_id": "f" * 32})
    assert error.request_id  # every answer carries X-Request-ID, kept for the server's logs


def test_bad_config_is_a_422_naming_the_field(api: LorabakeClient, dataset_dir: Path):
    with pytest.raises(LorabakeAPIError) as caught:
        api.submit_job({**CONFIG, "network_dim": 0}, dataset=dataset_dir)
    assert (caught.value.status, caught.value.code) == (422, "invalid_config")
    assert caught.value.fields == ["config.network_dim"]
    assert caught.value.retry_after is None


def test_a_server_that_is_not_there_is_a_connection_error():
    with (
        LorabakeClient(f"http://127.0.0.1:{services.free_port()}", "lb_x") as client,
        pytest.raises(LorabakeConnectionError, match="cannot reach"),
    ):
        client.list_jobs()


def test_jobs_page_back_with_a_cursor(
    served: Served, watched: Watched, canceled_job: CanceledRun, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LORABAKE_URL", served.url)
    monkeypatch.setenv("LORABAKE_API_KEY", served.key)
    with LorabakeClient.from_env() as api:
        everything = [j.id for j in api.list_jobs(limit=100).items]
        assert everything.index(canceled_job.job_id) < everything.index(watched.job_id)  # newest first

        first = api.list_jobs(limit=1)
        assert [j.id for j in first.items] == everything[:1] and first.next_cursor
        second = api.list_jobs(limit=1, cursor=first.next_cursor)
        assert [j.id for j in second.items] == everything[1:2]
        assert [j.id for j in api.iter_jobs(page_size=1)] == everything

        succeeded = [j.id for j in api.iter_jobs(status="succeeded", page_size=1)]
        assert watched.job_id in succeeded and canceled_job.job_id not in succeeded

        with pytest.raises(LorabakeAPIError) as caught:
            api.list_jobs(cursor="0" * 32)
        assert (caught.value.status, caught.value.code, caught.value.fields) == (
            422,
            "invalid_cursor",
            ["cursor"],
        )


def test_events_come_through_a_dropped_stream_once_each_in_order(
    api: LorabakeClient, canceled_job: CanceledRun
):
    assert canceled_job.reconnects, "the proxy's cut must have made the client reconnect"
    ids = [e.id for e in canceled_job.events]
    assert ids == sorted(set(ids)), "an event was repeated or out of order after reconnecting"
    assert ids == [e.id for e in api.events(canceled_job.job_id)], "an event was lost in the reconnection"
    assert canceled_job.events[-1].is_terminal and canceled_job.events[-1].data["status"] == "canceled"
    assert api.get_job(canceled_job.job_id).status == "canceled"


def test_events_resume_after_a_last_event_id(api: LorabakeClient, watched: Watched):
    events = list(api.events(watched.job_id))
    assert [e.type for e in events][:1] == ["status"] and events[-1].data["status"] == "succeeded"
    assert {"status", "stage", "progress", "artifact"} <= {e.type for e in events}
    middle = events[len(events) // 2].id
    assert middle is not None
    rest = list(api.events(watched.job_id, last_event_id=middle))
    assert [e.id for e in rest] == [e.id for e in events if e.id > middle]
    progress = next(e for e in events if e.type == "progress").progress()
    assert progress.total_steps == 8 and progress.total_epochs == 2


def test_datasets_upload_review_plan_delete(api: LorabakeClient, dataset_dir: Path):
    dataset = api.upload_dataset(dataset_dir, name="lisa from a folder")
    assert (dataset.name, dataset.images, len(dataset.image_list)) == ("lisa from a folder", 4, 4)
    assert dataset.subsets[0]["folder"] == "img/2_lisabp woman"
    assert dataset.id in [d.id for d in api.iter_datasets(page_size=1)]
    assert api.get_dataset(dataset.id).sha256 == dataset.sha256

    captions = api.get_captions(dataset.id)
    assert captions.revision == 0
    assert captions.by_path()["img/2_lisabp woman/001.png"] == "lisabp, woman, color 1"
    first = captions.captions[0]
    edited = api.set_captions(dataset.id, {first.image_id: "lisabp, woman, red"}, expected_revision=0)
    assert (edited.revision, edited.changed) == (1, 1)
    assert api.get_captions(dataset.id).by_path()[first.path] == "lisabp, woman, red"
    assert api.get_captions(dataset.id, revision=0).by_path()[first.path] == first.caption
    with pytest.raises(LorabakeAPIError) as stale:
        api.set_captions(dataset.id, {first.image_id: "x"}, expected_revision=0)
    assert stale.value.status == 409
    assert ("red", 1) in [(t.tag, t.count) for t in api.get_tags(dataset.id)]
    assert api.get_thumbnail(dataset.id, first.image_id)[:3] == b"\xff\xd8\xff"  # a JPEG

    plan = api.plan(CONFIG, dataset_id=dataset.id)
    assert plan.plan["total_steps"] == 8  # 4 images x 2 repeats x 2 epochs / batch 2
    assert [c.file for c in plan.checkpoints] == ["demo-000001.safetensors", "demo.safetensors"]
    counted = api.plan(CONFIG, counts={"subsets": [{"folder": "img/5_zkz dog", "images": 10}]})
    assert counted.plan["total_steps"] == 50

    api.delete_dataset(dataset.id)
    with pytest.raises(LorabakeAPIError) as gone:
        api.get_dataset(dataset.id)
    assert gone.value.code == "not_found"


def test_presets_and_kohya_import(api: LorabakeClient):
    presets = api.list_presets()
    assert {"character", "style", "concept"} <= {p.name for p in presets}
    style = api.get_preset("style")
    assert style.values == next(p.values for p in presets if p.name == "style")
    with pytest.raises(LorabakeAPIError) as caught:
        api.get_preset("nope")
    assert caught.value.status == 404
    imported = api.import_kohya_config({"pretrained_model_name_or_path": "tiny-sd15", "network_dim": 8})
    assert imported.config["network_dim"] == 8


def final_lora(api: LorabakeClient, job_id: str) -> Artifact:
    return next(a for a in api.list_artifacts(job_id) if a.is_final)


def test_download_resumes_with_a_range_where_storage_allows_it(
    api: LorabakeClient,
    watched: Watched,
    s3_server,
    tmp_path: Path,  # noqa: ANN001 - the suite's S3Server
):
    """S3 honours Range (the embedded server streams whole files): the .part's bytes are kept, and a .part
    that does not fit the file is fetched again whole rather than failing."""
    artifact = final_lora(api, watched.job_id)
    whole = api.download_artifact(artifact, tmp_path / "whole")  # a folder not there yet: made
    assert not whole.resumed_from and sha256_file(whole.path) == artifact.sha256
    data = whole.path.read_bytes()

    s3 = s3_server.client()
    s3.create_bucket(Bucket="client-ranges")
    s3.put_object(Bucket="client-ranges", Key="demo.safetensors", Body=data)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "client-ranges", "Key": "demo.safetensors"}
    )
    on_s3 = artifact.model_copy(update={"download_url": url})

    half = len(data) // 2
    target = tmp_path / "s3" / artifact.name
    target.parent.mkdir()
    Path(f"{target}.part").write_bytes(data[:half])
    resumed = api.download_artifact(on_s3, target.parent)
    assert resumed.resumed_from == half
    assert target.read_bytes() == data and not Path(f"{target}.part").exists()

    target.unlink()
    Path(f"{target}.part").write_bytes(bytes(b ^ 0xFF for b in data[:half]))  # a stale or damaged prefix
    refetched = api.download_artifact(on_s3, target.parent)
    assert refetched.resumed_from == 0 and target.read_bytes() == data


def test_a_file_that_does_not_match_its_sha256_is_refused(
    served: Served, api: LorabakeClient, watched: Watched, tmp_path: Path
):
    sample = next(a for a in api.list_artifacts(watched.job_id) if a.kind == "sample")
    stored = next((served.data / "objects" / "jobs" / watched.job_id).rglob(sample.name))
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # storage rot: same size, one byte
    try:
        with pytest.raises(ChecksumMismatchError) as caught:
            api.download_artifact(sample, tmp_path)
        run = served.cli(
            "download", watched.job_id, "--epoch", str(sample.epoch), "--samples", "--out", str(tmp_path)
        )
    finally:
        stored.write_bytes(original)
    assert caught.value.expected == sample.sha256 and caught.value.actual != sample.sha256
    assert not (tmp_path / sample.name).exists() and not (tmp_path / f"{sample.name}.part").exists()
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"{sample.name}: sha256" in run.stderr and "1 of 2 file(s) failed" in run.stderr

    good = tmp_path / "good.bin"
    good.write_bytes(original)
    verify_file(good, sample.sha256)
    with pytest.raises(ChecksumMismatchError):
        verify_file(good, "0" * 64)


def test_base_models_as_the_worker_reported_them(api: LorabakeClient):
    catalogue = api.list_models()
    tiny = next(m for m in catalogue.items if m.name == "tiny-sd15")
    assert (tiny.family, tiny.kind, tiny.source) == ("sd1", "diffusers", "local")
    assert tiny.size_bytes > 0 and tiny.last_seen_at is not None and tiny.last_seen_at.tzinfo is not None
    # the worker's captioners, apart from the base models
    captioners = {c.name: (c.method, c.workers_online) for c in catalogue.captioners}
    assert captioners["tiny-florence2"] == ("florence2", 1) and captioners["tiny-wd14"] == ("wd14", 1)
    assert "tiny-florence2" not in {m.name for m in catalogue.items}


def test_keys_made_listed_scoped_and_revoked(served: Served, api: LorabakeClient, watched: Watched):
    """The embedded key is an admin's: it makes a read-only key for another owner, which sees none of the
    first owner's jobs, may not upload, and stops working once revoked."""
    created = api.create_key("tenant-b", name="read only", scopes=["jobs:read"], limits={"max_queued": 2})
    assert created.key.startswith(created.prefix) and created.scopes == ["jobs:read"]
    assert created.limits.max_queued == 2 and not created.admin
    assert created.id in [k.id for k in api.list_keys(owner="tenant-b").items]
    assert api.get_key(created.id).owner == "tenant-b"

    with LorabakeClient(served.url, created.key) as tenant:
        assert tenant.list_jobs().items == []
        with pytest.raises(LorabakeAPIError) as hidden:
            tenant.get_job(watched.job_id)
        assert hidden.value.status == 404  # another owner's job is as if it did not exist
        with pytest.raises(LorabakeAPIError) as refused:
            tenant.list_datasets()
        assert (refused.value.status, refused.value.code) == (403, "missing_scope")
        assert refused.value.details["scope"] == "datasets:read"
        assert [k.id for k in tenant.list_keys().items] == [created.id]

        revoked = api.revoke_key(created.id)
        assert revoked.revoked_at is not None
        with pytest.raises(LorabakeAPIError) as gone:
            tenant.list_jobs()
        assert (gone.value.status, gone.value.code) == (401, "invalid_api_key")
    assert created.id not in [k.id for k in api.list_keys(owner="tenant-b").items]
    assert created.id in [k.id for k in api.list_keys(owner="tenant-b", include_revoked=True).items]
