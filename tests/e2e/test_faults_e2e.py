"""A job that was accepted finishes, and nothing it saved is lost, under the faults of a real deployment:
a worker host killed mid-epoch and during its final upload, Redis restarted without persistence with jobs
queued and one running, Redis down at submission, Postgres and the S3 server unreachable for 30 s mid-job.

Each test runs API and worker processes on a database, Redis server and bucket of its own, reached
through fault-injecting proxies, while a monitor polls the API the whole time. Each shows: the job
succeeded, every saved epoch's file downloads with its recorded sha256, at most one epoch of steps was
redone, how long after the fault training went on, and that the API never answered a 500. The figures are
printed (`pytest -s`) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import services
from tests.support.client import finished, submit, wait_for
from tests.support.datasets import kohya_entries, write_zip
from tests.support.faulty_stack import FaultyStack, Monitor

# 8 images x 2 repeats / batch 2 = 8 steps per epoch, 4 epochs, a file per epoch.
STEPS_PER_EPOCH = 8
CONFIG = {
    "base_model": "tiny-sd15",
    "output_name": "faults",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 4,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 4,
    "unet_lr": 5e-3,
    "text_encoder_lr": 0,
    "mixed_precision": "no",
    "save_precision": "float",
    "seed": 11,
}
EPOCH_FILES = [
    "faults-000001.safetensors",
    "faults-000002.safetensors",
    "faults-000003.safetensors",
    "faults.safetensors",
]
OUTAGE_SECONDS = 30


@pytest.fixture
def fault_db(models_dir) -> Iterator[str]:
    with services.migrated_database(models_dir) as url:
        yield url


@pytest.fixture
def stack(fault_db, s3_server, bucket, models_dir, tmp_path) -> Iterator[FaultyStack]:
    built = FaultyStack(
        pg_url=fault_db,
        s3_url=s3_server.url,
        bucket=bucket,
        models_dir=models_dir,
        workdir=tmp_path / "stack",
    )
    try:
        yield built.start()
    finally:
        built.stop()


@pytest.fixture
def dataset(tmp_path):
    return write_zip(tmp_path / "set.zip", kohya_entries(images=8, repeats=2, webp=False))


def report(what: str, **figures: object) -> None:
    print(f"\n[reliability] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def wait_until(check, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def get_job(stack: FaultyStack, job_id: str) -> dict:
    return httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.client.headers, timeout=30).json()


def assert_every_file_intact(stack: FaultyStack, job: dict, tmp_path) -> None:
    loras = [a for a in job["artifacts"] if a["kind"] == "lora"]
    assert [a["name"] for a in loras] == EPOCH_FILES
    for artifact in loras:
        response = httpx.get(
            stack.url + artifact["download_url"],
            headers=stack.client.headers,
            follow_redirects=True,
            timeout=60,
        )
        assert response.status_code == 200, artifact
        assert len(response.content) == artifact["size_bytes"]
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"], artifact["name"]


def assert_no_500(monitor: Monitor) -> None:
    codes = monitor.codes()
    assert set(codes) <= {200, 503}, codes


def training_again_after(monitor: Monitor, job_id: str, since: float) -> float:
    """Seconds from `since` until the API showed the job's next run (one more attempt) training."""
    before = max(attempts for at, _, _, attempts in monitor.job_states(job_id) if at <= since)
    for at, status, step, attempts in monitor.job_states(job_id):
        if at > since and attempts > before and status == "training" and step > 0:
            return at - since
    raise AssertionError("the job never showed as training again after the fault")


def last_step_before(monitor: Monitor, job_id: str, moment: float) -> int:
    return max((step for at, _, step, _ in monitor.job_states(job_id) if at <= moment), default=0)


def test_a_worker_host_killed_mid_epoch_loses_nothing(stack, dataset, s3_server, tmp_path):
    worker = stack.start_worker()
    job = submit(stack.client, dataset, CONFIG)
    monitor = Monitor(stack.client, [job["id"]]).start()
    try:
        # mid-epoch 2, after epoch 1's file and resume state are up
        wait_until(
            lambda: (
                get_job(stack, job["id"])["progress"]["step"] >= STEPS_PER_EPOCH + 3
                and stack.resume_record(s3_server.client(), job["id"])
            ),
            120,
            "epoch 2 under way",
        )
        stack.kill_worker(worker)
        killed_at = time.monotonic()
        state = stack.resume_record(s3_server.client(), job["id"])
        stack.start_worker()  # the replacement host
        done = wait_for(stack.client, job["id"], finished, timeout=240)
    finally:
        monitor.stop()
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert_every_file_intact(stack, done, tmp_path)
    reached = last_step_before(monitor, job["id"], killed_at)  # the last step the API showed before the kill
    redone = reached - state["step"]
    assert 0 <= redone <= STEPS_PER_EPOCH, (reached, state)
    resumed_in = training_again_after(monitor, job["id"], killed_at)
    assert_no_500(monitor)
    report(
        "worker host killed mid-epoch",
        steps_redone=redone,
        resumed_state_step=state["step"],
        seconds_to_training_again=round(resumed_in, 1),
        api_codes=dict(monitor.codes()),
    )


def test_a_worker_host_killed_during_the_final_upload_loses_nothing(stack, dataset, s3_server, tmp_path):
    worker = stack.start_worker()
    job = submit(stack.client, dataset, CONFIG)
    monitor = Monitor(stack.client, [job["id"]]).start()
    s3 = s3_server.client()
    try:
        # once epoch 3's state is up, slow the storage link so the final file takes seconds to upload
        wait_until(lambda: (stack.resume_record(s3, job["id"]) or {}).get("epoch") == 3, 180, "epoch 3 saved")
        stack.proxies["storage"].slow(8 * 1024)
        wait_until(lambda: get_job(stack, job["id"])["status"] == "uploading", 120, "the final upload")
        stack.kill_worker(worker)
        killed_at = time.monotonic()
        stack.proxies["storage"].restore()
        state = stack.resume_record(s3, job["id"])
        stack.start_worker()
        done = wait_for(stack.client, job["id"], finished, timeout=240)
    finally:
        monitor.stop()
    assert done["status"] == "succeeded", done["error"]
    assert_every_file_intact(stack, done, tmp_path)
    total = 4 * STEPS_PER_EPOCH
    redone = total - state["step"]
    assert state["epoch"] == 3 and redone == STEPS_PER_EPOCH
    resumed_in = training_again_after(monitor, job["id"], killed_at)
    assert_no_500(monitor)
    report(
        "worker host killed during the final upload",
        steps_redone=redone,
        seconds_to_training_again=round(resumed_in, 1),
        api_codes=dict(monitor.codes()),
    )


def test_redis_restarted_without_persistence_with_jobs_queued_and_one_running(stack, dataset, tmp_path):
    stack.start_worker()
    config = {**CONFIG, "epochs": 2}
    jobs = [submit(stack.client, dataset, {**config, "output_name": f"j{i}"}) for i in range(3)]
    ids = [j["id"] for j in jobs]
    monitor = Monitor(stack.client, ids).start()
    try:
        wait_until(lambda: get_job(stack, ids[0])["status"] == "training", 120, "the first job training")
        assert [get_job(stack, i)["status"] for i in ids[1:]] == ["queued", "queued"]
        stack.redis.restart()  # every message is gone: the two queued ones and the running one's
        wiped_at = time.monotonic()
        done = [wait_for(stack.client, i, finished, timeout=300) for i in ids]
    finally:
        monitor.stop()
    assert [d["status"] for d in done] == ["succeeded"] * 3, [d["error"] for d in done]
    assert [d["attempts"] for d in done] == [1, 1, 1]  # the running one went on; none ran twice
    started = {
        i: min(at for at, status, _, _ in monitor.job_states(i) if status == "training") for i in ids[1:]
    }
    assert_no_500(monitor)
    report(
        "Redis restarted without persistence (2 queued, 1 running)",
        seconds_to_next_job_training=round(min(started.values()) - wiped_at, 1),
        api_codes=dict(monitor.codes()),
    )


def test_a_job_submitted_while_redis_is_down_runs_once_it_is_back(stack, dataset, tmp_path):
    stack.start_worker()
    stack.proxies["broker"].refuse()
    try:
        started = time.monotonic()
        job = submit(stack.client, dataset, {**CONFIG, "epochs": 1})
        accepted_in = time.monotonic() - started
        time.sleep(5)
        assert get_job(stack, job["id"])["status"] == "queued"
    finally:
        stack.proxies["broker"].restore()
    back_at = time.monotonic()
    monitor = Monitor(stack.client, [job["id"]]).start()
    try:
        done = wait_for(stack.client, job["id"], finished, timeout=180)
    finally:
        monitor.stop()
    assert done["status"] == "succeeded", done["error"]
    preparing = [at for at, status, _, _ in monitor.job_states(job["id"]) if status != "queued"]
    assert_no_500(monitor)
    report(
        "Redis down at submission",
        accepted_in_seconds=round(accepted_in, 2),
        seconds_from_redis_back_to_started=round(min(preparing) - back_at, 1),
    )


def outage_mid_job(stack: FaultyStack, dataset, service: str, tmp_path) -> None:  # noqa: ANN001
    stack.start_worker()
    job = submit(stack.client, dataset, CONFIG)
    monitor = Monitor(stack.client, [job["id"]]).start()
    refused: list[httpx.Response] = []
    try:
        wait_until(lambda: get_job(stack, job["id"])["progress"]["step"] >= 5, 120, "training under way")
        stack.proxies[service].refuse()
        began = time.monotonic()
        while time.monotonic() - began < OUTAGE_SECONDS:  # submissions during the outage are refused cleanly
            with open(dataset, "rb") as fh:
                refused.append(
                    httpx.post(
                        f"{stack.url}/v1/jobs",
                        headers=stack.client.headers,
                        timeout=60,
                        files={"dataset": ("set.zip", fh)},
                        data={"config": json.dumps(CONFIG)},
                    )
                )
            time.sleep(5)
        stack.proxies[service].restore()
        ended_at = time.monotonic()
        done = wait_for(stack.client, job["id"], finished, timeout=240)
        finished_seen = time.monotonic()  # (polled every 0.3 s)
    finally:
        monitor.stop()
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1  # waited out, not restarted: no step redone
    assert_every_file_intact(stack, done, tmp_path)
    assert refused and all(r.status_code == 503 for r in refused), [r.text for r in refused]
    assert {r.json()["error"]["code"] for r in refused} == {f"{service}_unavailable"}
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    listed = httpx.get(f"{stack.url}/v1/jobs", headers=stack.client.headers).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]  # the refused submissions left no job behind
    stored = [
        k
        for k in bucket_object_keys(stack)
        if k.startswith("jobs/") and not k.startswith(f"jobs/{job['id']}/")
    ]
    assert stored == []  # nor any object
    states = monitor.job_states(job["id"])
    before = max(step for at, _, step, _ in states if at <= began)
    first_after = next(step for at, _, step, _ in states if at > ended_at)
    assert_no_500(monitor)
    report(
        f"{service} unreachable for {OUTAGE_SECONDS}s mid-job",
        steps_redone=0,
        attempts=done["attempts"],
        step_when_it_went=before,
        step_first_shown_after=first_after,  # training went on meanwhile
        seconds_from_outage_end_to_succeeded=round(finished_seen - ended_at, 1),
        refused_submissions=len(refused),
        api_codes=dict(monitor.codes()),
    )


def bucket_object_keys(stack: FaultyStack) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])]


def test_postgres_unreachable_for_30s_mid_job(stack, dataset, tmp_path):
    outage_mid_job(stack, dataset, "database", tmp_path)


def test_the_s3_server_unreachable_for_30s_mid_job(stack, dataset, tmp_path):
    outage_mid_job(stack, dataset, "storage", tmp_path)
