"""The client's Idempotency-Key: a new UUID on each creating call (or the caller's), the same one again on its
own retries after a lost answer, a 503 or a 409 `idempotency_key_in_use`; and, against a real
`lorabake serve` (SQLite), a submission whose first answer is lost in transit makes one dataset."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lorabake.client import LorabakeAPIError, LorabakeClient, LorabakeConnectionError
from tests.client.conftest import Served
from tests.client.receiver import Receiver

CREATED_JOB = {"id": "f" * 32, "status": "queued"}
Handler = Callable[[httpx.Request], httpx.Response]


def error_answer(status: int, code: str) -> httpx.Response:
    body = {"error": {"code": code, "message": code, "details": {}}}
    return httpx.Response(status, json=body, headers={"Retry-After": "0"})


class Script:
    """A server that gives these answers in turn (an exception: the connection failed) and notes each
    request's method, path and Idempotency-Key."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append((request.method, request.url.path, request.headers.get("idempotency-key")))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self) -> LorabakeClient:
        return LorabakeClient("http://lb.test", "lb_x", transport=httpx.MockTransport(self), max_retry_wait=0)


def test_each_creating_call_sends_a_new_uuid(tmp_path: Path):
    script = Script(*(httpx.Response(201, json=CREATED_JOB) for _ in range(2)))
    with script.client() as api:
        api.submit_job({"base_model": "m"}, dataset_id="d" * 32)
        api.submit_job({"base_model": "m"}, dataset_id="d" * 32)
    first, second = (key for _, _, key in script.seen)
    assert first and second and first != second
    assert uuid.UUID(first).version == 4


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset before the answer"),
        error_answer(503, "database_unavailable"),
        error_answer(409, "idempotency_key_in_use"),
    ],
    ids=["refused", "answer lost", "outage", "first still running"],
)
def test_a_retry_sends_the_same_key(failure: httpx.Response | Exception, tmp_path: Path):
    zip_path = tmp_path / "set.zip"
    zip_path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    script = Script(failure, httpx.Response(201, json=CREATED_JOB))
    with script.client() as api:
        job = api.submit_job({"base_model": "m"}, dataset=zip_path)
    assert job.id == CREATED_JOB["id"]
    (_, path, first), (_, _, again) = script.seen
    assert path == "/v1/jobs" and first is not None and first == again


def test_the_callers_key_is_sent_and_reused():
    script = Script(httpx.ReadError("lost"), httpx.Response(201, json={"id": "w", "url": "u", "secret": "s"}))
    with script.client() as api:
        assert api.create_webhook("https://hooks.example.com/x", idempotency_key="order-7").secret == "s"
    assert [key for _, _, key in script.seen] == ["order-7", "order-7"]


@pytest.mark.parametrize(
    "answer", [error_answer(429, "too_many_queued"), error_answer(409, "upload_used"), error_answer(422, "x")]
)
def test_refusals_are_not_retried(answer: httpx.Response):
    script = Script(answer)
    with script.client() as api, pytest.raises(LorabakeAPIError):
        api.submit_job({"base_model": "m"}, dataset_id="d" * 32)
    assert len(script.seen) == 1


def test_retries_end_and_writes_without_a_key_are_never_retried():
    script = Script(*(httpx.ReadError("lost") for _ in range(3)))
    with script.client() as api, pytest.raises(LorabakeConnectionError):
        api.submit_job({"base_model": "m"}, dataset_id="d" * 32)
    assert len(script.seen) == 3  # retries=2
    script = Script(httpx.ReadError("lost"))
    with script.client() as api, pytest.raises(LorabakeConnectionError):
        api.cancel_job("f" * 32)
    assert len(script.seen) == 1


class LosesFirstAnswer(httpx.HTTPTransport):
    """httpx's own transport, but the answer to the first POST never arrives (the server did the work)."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.posts.append(request.headers.get("idempotency-key"))
            if len(self.posts) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("the connection dropped before the answer arrived")
        return response


def test_a_lost_answer_is_retried_with_its_key_and_makes_one_dataset(served: Served, dataset_dir: Path):
    name = f"idempotent-{uuid.uuid4().hex[:6]}"
    transport = LosesFirstAnswer()
    with LorabakeClient(served.url, served.key, transport=transport) as api:
        dataset = api.upload_dataset(dataset_dir, name=name)  # a folder: zipped once, sent twice
        same = [d for d in api.iter_datasets() if d.name == name]
    assert len(transport.posts) == 2 and transport.posts[0] == transport.posts[1] is not None
    assert [d.id for d in same] == [dataset.id]


def test_the_cli_sends_one_key_on_all_its_tries(served: Served, receiver: Receiver, tmp_path: Path):
    """`lorabake submit` against a server that is down (503, then 422 with the caller's key)."""
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"base_model": "tiny-sd15"}))
    args = (
        "submit",
        "d" * 32,
        "--config",
        str(config),
        "--url",
        receiver.url("").rstrip("/"),
        "--key",
        "lb_x",
    )
    receiver.answers["/v1/jobs"] = 503
    assert served.cli(*args).returncode == 1
    keys = [r.headers.get("idempotency-key") for r in receiver.received if r.path == "/v1/jobs"]
    assert len(keys) == 4 and len(set(keys)) == 1 and uuid.UUID(keys[0]).version == 4  # retries=3
    receiver.received.clear()
    receiver.answers["/v1/jobs"] = 422
    assert served.cli(*args, "--idempotency-key", "order-42").returncode == 1
    assert [r.headers.get("idempotency-key") for r in receiver.received] == ["order-42"]
    direct = served.cli(
        "submit", str(tmp_path), "--config", str(config), "--direct", "--idempotency-key", "x"
    )
    assert direct.returncode == 2 and "--idempotency-key" in direct.stderr
