"""Webhooks through the real stack (API and worker processes, Postgres, Redis, S3): a receiver in the test
verifies every signature with the Standard Webhooks library, sees every event of a job once, in the order
the job's own event stream has them once sorted by `sequence` (deliveries arrive in no set order), survives
its own outage (retries arrive with the same ids), and another owner's receiver sees nothing of it."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import lorabake
from tests.support.client import Stack, finished, wait_for
from tests.support.datasets import kohya_entries, write_zip
from tests.support.services import wait_until

CONFIG = {
    "base_model": "tiny-sd15",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "mixed_precision": "no",
    "save_precision": "float",
    "sample_prompts": ["a photo --w 64 --h 64 --s 2"],
    "sample_every_n_epochs": 1,
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server taking webhooks; `failing` makes it answer 503 (and still record what came)."""

    server: http.server.ThreadingHTTPServer
    seen: list[Received] = field(default_factory=list)
    failing: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def at(self, path: str, ok_only: bool = True) -> list[Received]:
        return [
            r for r in list(self.seen) if r.path == path and (not ok_only or r.headers.get("x-ok") == "1")
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            rec = state["r"]
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["x-ok"] = "0" if rec.failing else "1"
            rec.seen.append(Received(self.path, headers, body))
            self.send_response(503 if rec.failing else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state["r"]
    server.shutdown()


def register(stack: Stack, url: str, **fields: object) -> dict:
    response = httpx.post(f"{stack.url}/v1/webhooks", headers=stack.headers, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def submit(stack: Stack, tmp_path, **form: str) -> dict:  # noqa: ANN001
    zip_path = write_zip(tmp_path / "set.zip", kohya_entries(images=4, repeats=1, webp=False))
    with open(zip_path, "rb") as fh:
        response = httpx.post(
            f"{stack.url}/v1/jobs",
            headers=stack.headers,
            files={"dataset": ("set.zip", fh)},
            data={"config": json.dumps(CONFIG), **form},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    return response.json()


def verified(received: list[Received], secret: str) -> list[dict]:
    hook = Webhook(secret)
    return [hook.verify(r.body, r.headers) for r in received]


def stream_events(stack: Stack, job_id: str) -> list[tuple[str, dict]]:
    body = httpx.get(f"{stack.url}/v1/jobs/{job_id}/events", headers=stack.headers, timeout=60).text
    events = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "id" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def in_sequence(payloads: list[dict]) -> list[dict]:
    """A job's events as a receiver orders them: by `sequence`, not by arrival."""
    return sorted(payloads, key=lambda p: p["sequence"])


def as_stream_event(payload: dict) -> tuple[str, dict]:
    kind = payload["type"].removeprefix("job.")
    kind = "status" if kind in ("succeeded", "failed", "canceled") else kind
    return kind, payload["data"]["event"]


def deliveries(stack: Stack, webhook_id: str) -> list[dict]:
    """The whole delivery log, newest first, page by page."""
    found: list[dict] = []
    params: dict[str, str | int] = {"limit": 100}
    while True:
        response = httpx.get(
            f"{stack.url}/v1/webhooks/{webhook_id}/deliveries", headers=stack.headers, params=params
        )
        assert response.status_code == 200, response.text
        found += response.json()["items"]
        if response.json()["next_cursor"] is None:
            return found
        params["cursor"] = response.json()["next_cursor"]


def all_delivered(stack: Stack, webhook_id: str, job_id: str) -> bool:
    """This job's job.succeeded has a delivery and every delivery of the job is delivered: the last to
    arrive need not be the last event (an owner's endpoint also gets the session's other jobs')."""
    log = [d for d in deliveries(stack, webhook_id) if d["job_id"] == job_id]
    ended = any(d["event_type"] == "job.succeeded" for d in log)
    return ended and {d["status"] for d in log} == {"delivered"}


def job_webhook(stack: Stack, job_id: str) -> str:
    response = httpx.get(f"{stack.url}/v1/webhooks", headers=stack.headers, params={"job_id": job_id})
    (hook,) = response.json()["items"]
    return hook["id"]


def test_a_receiver_sees_every_event_of_a_job_by_sequence_and_no_other_owners(stack, receiver, tmp_path):
    mine = register(stack, f"{receiver.url}/all", description="everything")
    other_key = lorabake("create-key", "--owner", "someone-else", env=stack.env)
    theirs = httpx.post(
        f"{stack.url}/v1/webhooks",
        headers={"Authorization": f"Bearer {other_key}"},
        json={"url": f"{receiver.url}/other"},
    )
    assert theirs.status_code == 201
    job = submit(stack, tmp_path, webhook=f"{receiver.url}/job", webhook_events="job.artifact,job.succeeded")
    done = wait_for(stack, job["id"], finished, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    wait_until(lambda: all_delivered(stack, mine["id"], job["id"]), 60, "every event at /all")
    hook_id = job_webhook(stack, job["id"])
    wait_until(lambda: all_delivered(stack, hook_id, job["id"]), 60, "every event at /job")

    everything = verified(receiver.at("/all"), mine["secret"])  # raises unless every signature verifies
    assert len({r.headers["webhook-id"] for r in receiver.at("/all")}) == len(everything)
    # the endpoint has every event of this owner: the session's other tests' jobs are this owner's too
    events = in_sequence([e for e in everything if e["data"]["job"]["id"] == job["id"]])
    streamed = [e for e in stream_events(stack, job["id"]) if e[0] != "progress"]
    assert [as_stream_event(e) for e in events if e["type"] != "job.progress"] == streamed  # all, in order
    assert len({e["sequence"] for e in events}) == len(events)  # one sequence number per event
    assert events[0]["type"] == "job.status" and events[0]["data"]["event"]["status"] == "queued"
    assert events[-1]["type"] == "job.succeeded"
    assert any(e["type"] == "job.progress" for e in events)
    artifacts = [e["data"]["artifact"] for e in events if e["type"] == "job.artifact"]
    assert {a["id"] for a in artifacts} == {a["id"] for a in done["artifacts"]}
    assert all(a["download_url"].startswith(f"/v1/jobs/{job['id']}/") and a["storage_url"] for a in artifacts)
    lora = next(a for a in artifacts if a["kind"] == "lora")
    assert httpx.get(lora["storage_url"]).content.__len__() == lora["size_bytes"]  # presigned: no key needed

    default_secret = httpx.get(f"{stack.url}/v1/webhooks/default-secret", headers=stack.headers).json()[
        "secret"
    ]
    job_events = verified(receiver.at("/job"), default_secret)
    assert {e["type"] for e in job_events} == {"job.artifact", "job.succeeded"}
    assert len([e for e in job_events if e["type"] == "job.artifact"]) == len(done["artifacts"])
    assert receiver.at("/other", ok_only=False) == []  # another owner's endpoint saw nothing of this job

    log = [d for d in deliveries(stack, mine["id"]) if d["job_id"] == job["id"]]
    assert len(log) == len(events) and {d["status"] for d in log} == {"delivered"}
    assert all(d["attempts"][0]["status_code"] == 204 and d["attempts"][0]["latency_ms"] > 0 for d in log)
    metrics = httpx.get(f"{stack.url}/metrics").text
    delivered = next(
        line
        for line in metrics.splitlines()
        if line.startswith('lorabake_webhook_deliveries{status="delivered"}')
    )
    assert float(delivered.split()[-1]) >= len(events) + len(job_events)


def test_a_receiver_that_was_down_gets_every_event_later_with_the_same_ids(stack, receiver, tmp_path):
    receiver.failing = True
    endpoint = register(
        stack, f"{receiver.url}/flaky", events=["job.status", "job.artifact", "job.succeeded"]
    )
    job = submit(stack, tmp_path)

    def queued() -> dict | None:
        """The delivery of the job's first event, `queued`."""
        log = [d for d in deliveries(stack, endpoint["id"]) if d["job_id"] == job["id"]]
        return next((d for d in log if d["payload"]["data"]["event"].get("status") == "queued"), None)

    wait_until(
        lambda: len((queued() or {"attempts": []})["attempts"]) >= 2, 60, "retries while the receiver fails"
    )
    first = queued()
    assert first is not None and first["status"] == "pending"
    assert [a["status_code"] for a in first["attempts"]][:2] == [503, 503]
    receiver.failing = False
    done = wait_for(stack, job["id"], finished, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    wait_until(lambda: all_delivered(stack, endpoint["id"], job["id"]), 60, "every event, after the outage")

    failed_ids = {
        r.headers["webhook-id"]
        for r in receiver.at("/flaky", ok_only=False)
        if r.headers["x-ok"] == "0" and job["id"].encode() in r.body
    }
    assert failed_ids
    delivered = receiver.at("/flaky")
    assert failed_ids <= {r.headers["webhook-id"] for r in delivered}  # the retries carried the same ids
    events = [e for e in verified(delivered, endpoint["secret"]) if e["data"]["job"]["id"] == job["id"]]
    streamed = [e for e in stream_events(stack, job["id"]) if e[0] in ("status", "artifact")]
    # nothing lost, each once; in order by `sequence` (a retried event arrives after later ones)
    assert [as_stream_event(e) for e in in_sequence(events)] == streamed
    log = {d["id"]: d for d in deliveries(stack, endpoint["id"])}
    assert log[first["id"]]["status"] == "delivered" and len(log[first["id"]]["attempts"]) >= 3

    again = httpx.post(
        f"{stack.url}/v1/webhooks/{endpoint['id']}/deliveries/{first['id']}/redeliver", headers=stack.headers
    )
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    wait_until(
        lambda: [r.headers["webhook-id"] for r in receiver.at("/flaky")].count(first["id"]) == 2,
        30,
        "the redelivery",
    )


def test_a_rotated_secret_signs_beside_the_old_one_for_a_while(stack, receiver, tmp_path):
    endpoint = register(stack, f"{receiver.url}/rotated", events=["job.status"])
    rotated = httpx.post(
        f"{stack.url}/v1/webhooks/{endpoint['id']}/rotate-secret", headers=stack.headers
    ).json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_secret_valid_until"]
    job = submit(stack, tmp_path)
    wait_until(lambda: receiver.at("/rotated"), 60, "a delivery after the rotation")
    httpx.post(f"{stack.url}/v1/jobs/{job['id']}/cancel", headers=stack.headers)  # no need to train it
    first = receiver.at("/rotated")[:1]
    # both verify: a receiver switches to the new secret without missing a delivery
    assert verified(first, rotated["secret"]) and verified(first, endpoint["secret"])
    wait_for(stack, job["id"], finished, timeout=120)
