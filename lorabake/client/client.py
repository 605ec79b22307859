"""LorabakeClient: every endpoint of the v1 API as a typed method, on one pooled httpx client."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from lorabake.client.archive import dataset_zip
from lorabake.client.downloads import DownloadResult, ProgressHook, download_file
from lorabake.client.errors import LorabakeClientError
from lorabake.client.http import ApiSession, api_error, new_idempotency_key, same_origin
from lorabake.client.models import (
    ApiKeyInfo,
    Artifact,
    CaptionEditResult,
    Captions,
    CreatedKey,
    CreatedWebhook,
    Dataset,
    DatasetPage,
    DatasetSummary,
    DeliveryPage,
    Event,
    Job,
    JobPage,
    KeyPage,
    KohyaImport,
    ModelCatalogue,
    Plan,
    Preset,
    Queue,
    Readiness,
    TagCount,
    Upload,
    Usage,
    Webhook,
    WebhookDelivery,
    WebhookSecret,
)
from lorabake.client.sse import ReconnectHook, reconnecting_events

DEFAULT_URL = "http://127.0.0.1:8000"  # where `lorabake serve` listens
# The server sends a keep-alive every 15 s, so a read that waits much longer means the stream is dead.
EVENTS_READ_TIMEOUT = 60.0


class LorabakeClient:
    """A client of one lorabake server. Use it as a context manager (or call `close()`).

    `retries`: how many times a GET answered 503 or 429 is tried again, after the server's Retry-After
    (capped at `max_retry_wait`). The methods that create something (`submit_job`, `upload_dataset`,
    `create_upload`, `caption_dataset`, `create_key`, `create_webhook`) send an `Idempotency-Key` (a new
    UUID, or their `idempotency_key`) and are tried again with it after a lost connection, a 503 or a 409
    `idempotency_key_in_use`: the server answers a repeat with its first answer, so nothing is made twice.
    Other writes are never retried, the caller decides."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        upload_timeout: float = 600.0,
        retries: int = 2,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.upload_timeout = upload_timeout
        self._api = ApiSession(
            base_url,
            api_key,
            timeout=timeout,
            retries=retries,
            max_retry_wait=max_retry_wait,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._api.base_url

    @property
    def api_key(self) -> str | None:
        return self._api.api_key

    @classmethod
    def from_env(
        cls, base_url: str | None = None, api_key: str | None = None, **options: Any
    ) -> LorabakeClient:
        """Arguments first, then LORABAKE_URL and LORABAKE_API_KEY, then the embedded mode's address."""
        return cls(
            base_url or os.environ.get("LORABAKE_URL") or DEFAULT_URL,
            api_key or os.environ.get("LORABAKE_API_KEY") or None,
            **options,
        )

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> LorabakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health --------------------------------------------------------------------------------------------
    def health(self) -> bool:
        """Whether the API process answers (`/healthz`)."""
        return self._api.request("GET", "/healthz").json().get("status") == "ok"

    def ready(self) -> Readiness:
        """`/readyz`: database, broker and storage checks (a not-ready server answers 503 with them)."""
        return self._api.parse(Readiness, self._api.request("GET", "/readyz", ok=(200, 503)))

    # --- jobs ----------------------------------------------------------------------------------------------
    def submit_job(
        self,
        config: Mapping[str, Any],
        *,
        dataset: str | os.PathLike[str] | None = None,
        dataset_id: str | None = None,
        upload_id: str | None = None,
        dataset_url: str | None = None,
        preset: str | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a training job. The dataset is exactly one of: `dataset` (a zip, or a folder zipped on the
        fly, sent in the request), `dataset_id` (a stored dataset), `upload_id` (a zip sent to storage
        with `upload_direct()`) or `dataset_url` (an http(s) URL of a zip the server fetches). `preset` sets
        `config.preset` (it fills only the fields the config leaves out). `webhook` is a URL that receives
        this job's events (`webhook_events` of them; all when None), signed with your default secret
        (`get_default_webhook_secret()`).

        `idempotency_key` (default: a new one) makes sending it again give this job, not a second one.
        A 429 (`too_many_queued`, `rate_limited`) raises LorabakeAPIError with `retry_after`, and nothing
        was stored."""
        body: dict[str, Any] = {**config, **({"preset": preset} if preset else {})}
        sources = _params(
            dataset=dataset, dataset_id=dataset_id, upload_id=upload_id, dataset_url=dataset_url
        )
        if len(sources) != 1:
            raise LorabakeClientError(
                "give exactly one of dataset (a zip or folder), dataset_id, upload_id or dataset_url"
            )
        hook = _webhook_fields(webhook, webhook_events)
        key = idempotency_key or new_idempotency_key()
        if dataset is not None:
            fields = {"config": json.dumps(body), **_form_fields(hook)}
            return self._api.parse(Job, self._post_zip("/v1/jobs", dataset, fields, key))
        response = self._api.request(
            "POST", "/v1/jobs", ok=(201,), idempotency_key=key, json={**sources, "config": body, **hook}
        )
        return self._api.parse(Job, response)

    def _post_zip(
        self, path: str, dataset: str | os.PathLike[str], fields: dict[str, str], idempotency_key: str
    ) -> httpx.Response:
        """A multipart upload of the dataset zip (a folder is zipped first) beside text `fields`; a retry
        sends the same zip again (httpx rewinds the file)."""
        with dataset_zip(dataset) as archive, open(archive, "rb") as fh:
            return self._api.request(
                "POST",
                path,
                ok=(201,),
                timeout=self.upload_timeout,
                idempotency_key=idempotency_key,
                files={"dataset": (_upload_name(dataset), fh, "application/zip")},
                data=fields,
            )

    def get_job(self, job_id: str) -> Job:
        return self._api.parse(Job, self._api.request("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> JobPage:
        """One page, newest first; pass `next_cursor` as `cursor` for the next (older) one."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return self._api.parse(JobPage, self._api.request("GET", "/v1/jobs", params=params))

    def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job, newest first, a page at a time."""
        cursor = None
        while True:
            page = self.list_jobs(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel_job(self, job_id: str) -> Job:
        """A queued job is canceled at once, a running one between two steps (saved epochs stay); a 409
        (`job_finished`) once it has ended."""
        return self._api.parse(Job, self._api.request("POST", f"/v1/jobs/{job_id}/cancel", ok=(202,)))

    def events(
        self,
        job_id: str,
        *,
        last_event_id: int | None = None,
        max_attempts: int = 10,
        on_reconnect: ReconnectHook | None = None,
    ) -> Iterator[Event]:
        """The job's events from the start (or after `last_event_id`) until its terminal status. A dropped
        stream is reopened with Last-Event-ID: no event is lost or repeated. `on_reconnect(n, error)` is
        called before each reconnection."""
        return reconnecting_events(
            lambda after: self._open_events(job_id, after),
            lambda: self.get_job(job_id).is_finished,
            last_event_id=last_event_id,
            max_attempts=max_attempts,
            on_reconnect=on_reconnect,
        )

    def _open_events(self, job_id: str, after: int | None) -> AbstractContextManager[httpx.Response]:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        timeout = httpx.Timeout(self._api.timeout, read=EVENTS_READ_TIMEOUT)
        return self._api.stream(f"/v1/jobs/{job_id}/events", headers, timeout)

    def wait(self, job_id: str, *, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follows the job's events until it ends; returns the finished job."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return self.get_job(job_id)

    # --- artifacts -----------------------------------------------------------------------------------------
    def list_artifacts(self, job_id: str) -> list[Artifact]:
        return self._api.parse_list(Artifact, self._api.request("GET", f"/v1/jobs/{job_id}/artifacts"))

    def download_artifact(
        self,
        artifact: Artifact,
        folder: str | os.PathLike[str] = ".",
        *,
        filename: str | None = None,
        on_progress: ProgressHook | None = None,
        attempts: int = 3,
    ) -> DownloadResult:
        """Saves the file into `folder` (made if missing) as its own name, or `filename`: through
        `NAME.part`, resumed where the storage allows a Range request, checked against the recorded sha256
        (ChecksumMismatchError). A file already there with the right sha256 is not fetched again."""
        if not artifact.download_url:
            raise LorabakeClientError(
                f"artifact {artifact.name} has no download_url: list the job's artifacts"
            )
        url = artifact.download_url
        return download_file(
            Path(folder).expanduser() / (filename or artifact.name),
            artifact.size_bytes,
            artifact.sha256,
            lambda offset: self._api.open_file(url, offset),
            on_progress=on_progress,
            attempts=attempts,
        )

    # --- datasets, uploads straight to storage --------------------------------------------------------------
    def upload_dataset(
        self,
        dataset: str | os.PathLike[str] | None = None,
        *,
        upload_id: str | None = None,
        dataset_url: str | None = None,
        name: str | None = None,
        repeats: int | None = None,
        trigger_word: str | None = None,
        class_word: str | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """Stores a dataset: exactly one of `dataset` (a zip, or a folder zipped on the fly, sent in the
        request), `upload_id` (a zip sent to storage with `upload_direct()`) or `dataset_url` (an http(s)
        URL of a zip the server fetches). `repeats`, `trigger_word` and `class_word` are for flat
        datasets; Kohya folders (`img/6_lisabp woman`) carry their own."""
        options = _params(name=name, repeats=repeats, trigger_word=trigger_word, class_word=class_word)
        sources = _params(dataset=dataset, upload_id=upload_id, dataset_url=dataset_url)
        if len(sources) != 1:
            raise LorabakeClientError(
                "give exactly one of dataset (a zip or folder), upload_id or dataset_url"
            )
        key = idempotency_key or new_idempotency_key()
        if dataset is not None:
            response = self._post_zip(
                "/v1/datasets", dataset, {"options": json.dumps(options)} if options else {}, key
            )
        else:
            body = {**sources, **({"options": options} if options else {})}
            response = self._api.request("POST", "/v1/datasets", ok=(201,), idempotency_key=key, json=body)
        return self._api.parse(Dataset, response)

    def create_upload(self, *, filename: str | None = None, idempotency_key: str | None = None) -> Upload:
        """`POST /v1/uploads`: a URL to send one dataset zip to, straight to storage (`put_upload()`), and
        the `upload_id` that names it once sent. `filename` is what the dataset is named after."""
        body = _params(filename=filename)
        key = idempotency_key or new_idempotency_key()
        response = self._api.request("POST", "/v1/uploads", ok=(201,), idempotency_key=key, json=body)
        return self._api.parse(Upload, response)

    def put_upload(self, upload: Upload, dataset: str | os.PathLike[str]) -> None:
        """Sends the zip (a folder is zipped first) to the upload's URL with the headers it names, as the
        whole body. The URL carries its own credentials (an S3 signature, or the embedded mode's token):
        the API key goes only to a URL of the API's own origin. Not retried; an error answer raises
        LorabakeAPIError (from S3, `code` is `http_403` and so on, `message` its text)."""
        url = upload.url
        auth = self._api.auth if same_origin(url, self.base_url) else {}
        with dataset_zip(dataset) as archive, open(archive, "rb") as fh:
            request = self._api.http.build_request(
                upload.method or "PUT",
                url,
                headers={**auth, **upload.headers},
                content=fh,
                timeout=self.upload_timeout,
            )
            response = self._api.send(request)
        if not response.is_success:
            raise api_error(response)

    def upload_direct(self, dataset: str | os.PathLike[str], *, filename: str | None = None) -> str:
        """A dataset zip (or a folder, zipped first) sent straight to storage rather than through the API;
        returns the `upload_id` to give `submit_job()` or `upload_dataset()` (once: each upload makes one
        job or dataset, and expires unused after a while)."""
        upload = self.create_upload(filename=filename or _upload_name(dataset))
        self.put_upload(upload, dataset)
        return upload.upload_id

    def list_datasets(self, *, limit: int = 20, cursor: str | None = None) -> DatasetPage:
        params = _params(limit=limit, cursor=cursor)
        return self._api.parse(DatasetPage, self._api.request("GET", "/v1/datasets", params=params))

    def iter_datasets(self, *, page_size: int = 100) -> Iterator[DatasetSummary]:
        cursor = None
        while True:
            page = self.list_datasets(limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._api.parse(Dataset, self._api.request("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Deletes it and its files; a 409 while an unfinished job uses it."""
        self._api.request("DELETE", f"/v1/datasets/{dataset_id}", ok=(204,))

    def caption_dataset(
        self,
        dataset_id: str,
        config: Mapping[str, Any],
        *,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queues a caption job (`{"method": "wd14", ...}`: blip, wd14, florence2, qwen_vl, joycaption, or
        auto with `model_family`; docs/datasets.md); its result is the next revision. `webhook` and
        `webhook_events` as for `submit_job()`."""
        body = {**config, **_webhook_fields(webhook, webhook_events)}
        key = idempotency_key or new_idempotency_key()
        response = self._api.request(
            "POST", f"/v1/datasets/{dataset_id}/caption", ok=(201,), idempotency_key=key, json=body
        )
        return self._api.parse(Job, response)

    def get_captions(self, dataset_id: str, *, revision: int | None = None) -> Captions:
        params = _params(revision=revision)
        return self._api.parse(
            Captions, self._api.request("GET", f"/v1/datasets/{dataset_id}/captions", params=params)
        )

    def edit_captions(self, dataset_id: str, edit: Mapping[str, Any]) -> CaptionEditResult:
        """One PUT, one new revision: `set`, `find_replace`, `remove_tags`, `add_tags`, `add_position`,
        `image_ids`, `expected_revision` (a 409 if the captions changed since), as docs/datasets.md says."""
        response = self._api.request("PUT", f"/v1/datasets/{dataset_id}/captions", json=dict(edit))
        return self._api.parse(CaptionEditResult, response)

    def set_captions(
        self, dataset_id: str, captions: Mapping[str, str | None], *, expected_revision: int | None = None
    ) -> CaptionEditResult:
        """Sets captions by image id (None: train on the folder's `trigger class`)."""
        edit: dict[str, Any] = {"set": [{"image_id": i, "caption": c} for i, c in captions.items()]}
        if expected_revision is not None:
            edit["expected_revision"] = expected_revision
        return self.edit_captions(dataset_id, edit)

    def get_tags(self, dataset_id: str) -> list[TagCount]:
        return self._api.parse_list(TagCount, self._api.request("GET", f"/v1/datasets/{dataset_id}/tags"))

    def get_thumbnail(self, dataset_id: str, image_id: str) -> bytes:
        """A JPEG thumbnail of one image."""
        return self._api.request("GET", f"/v1/datasets/{dataset_id}/images/{image_id}/thumbnail").content

    # --- base models, API keys ----------------------------------------------------------------------------
    def list_models(self) -> ModelCatalogue:
        """The base models the workers reported, by the name `config.base_model` takes (`items`), and the
        captioner models (`captioners`)."""
        return self._api.parse(ModelCatalogue, self._api.request("GET", "/v1/models"))

    def create_key(
        self,
        owner: str,
        *,
        name: str = "",
        scopes: list[str] | None = None,
        admin: bool = False,
        limits: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedKey:
        """A new key for `owner` (admin keys only). Its `key` is in this answer only."""
        body: dict[str, Any] = {"owner": owner, "name": name, "admin": admin, "limits": dict(limits or {})}
        if scopes is not None:
            body["scopes"] = scopes
        key = idempotency_key or new_idempotency_key()
        response = self._api.request("POST", "/v1/keys", ok=(201,), idempotency_key=key, json=body)
        return self._api.parse(CreatedKey, response)

    def list_keys(
        self,
        *,
        owner: str | None = None,
        include_revoked: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> KeyPage:
        """Newest first, without the keys themselves: an admin sees every owner's (or `owner`'s), a tenant
        key its own owner's."""
        params = _params(owner=owner, include_revoked=include_revoked or None, limit=limit, cursor=cursor)
        return self._api.parse(KeyPage, self._api.request("GET", "/v1/keys", params=params))

    def get_key(self, key_id: str) -> ApiKeyInfo:
        return self._api.parse(ApiKeyInfo, self._api.request("GET", f"/v1/keys/{key_id}"))

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """The key stops working at once (on other API processes within their key cache's seconds)."""
        return self._api.parse(ApiKeyInfo, self._api.request("DELETE", f"/v1/keys/{key_id}"))

    # --- webhooks ----------------------------------------------------------------------------------------
    def create_webhook(
        self,
        url: str,
        events: Sequence[str] | None = None,
        description: str = "",
        *,
        idempotency_key: str | None = None,
    ) -> CreatedWebhook:
        """Registers `url` to receive every event of your jobs (or those `events` names: `job.status`,
        `job.stage`, `job.progress`, `job.artifact`, `job.succeeded`, `job.failed`, `job.canceled`).
        Keep the answer's `secret`: it verifies the signatures (Standard Webhooks)."""
        body = {"url": url, "events": list(events or []), "description": description}
        key = idempotency_key or new_idempotency_key()
        response = self._api.request("POST", "/v1/webhooks", ok=(201,), idempotency_key=key, json=body)
        return self._api.parse(CreatedWebhook, response)

    def list_webhooks(self, *, job_id: str | None = None) -> list[Webhook]:
        """Your registered endpoints, or with `job_id` that job's own `webhook`."""
        response = self._api.request("GET", "/v1/webhooks", params=_params(job_id=job_id))
        return self._api.parse_list(Webhook, response, key="items")

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._api.parse(Webhook, self._api.request("GET", f"/v1/webhooks/{webhook_id}"))

    def delete_webhook(self, webhook_id: str) -> None:
        """Stops sending to it; deliveries not made yet are dropped, its delivery log goes with it."""
        self._api.request("DELETE", f"/v1/webhooks/{webhook_id}", ok=(204,))

    def get_webhook_secret(self, webhook_id: str) -> WebhookSecret:
        """An endpoint's secret (for a job's own webhook: your default secret)."""
        return self._api.parse(WebhookSecret, self._api.request("GET", f"/v1/webhooks/{webhook_id}/secret"))

    def rotate_webhook_secret(self, webhook_id: str) -> WebhookSecret:
        """A new secret; the old one also signs for 24 h (`previous_secret_valid_until`). A job's own
        webhook is a 409 `not_rotatable`: rotate the default secret."""
        response = self._api.request("POST", f"/v1/webhooks/{webhook_id}/rotate-secret")
        return self._api.parse(WebhookSecret, response)

    def get_default_webhook_secret(self) -> WebhookSecret:
        """The secret that signs your jobs' own `webhook` deliveries."""
        return self._api.parse(WebhookSecret, self._api.request("GET", "/v1/webhooks/default-secret"))

    def rotate_default_webhook_secret(self) -> WebhookSecret:
        response = self._api.request("POST", "/v1/webhooks/default-secret/rotate")
        return self._api.parse(WebhookSecret, response)

    def list_webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> DeliveryPage:
        """One page of its delivery log, newest first (`status`: pending, delivered or failed); each
        delivery with every attempt."""
        params = _params(status=status, limit=limit, cursor=cursor)
        response = self._api.request("GET", f"/v1/webhooks/{webhook_id}/deliveries", params=params)
        return self._api.parse(DeliveryPage, response)

    def iter_webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, page_size: int = 100
    ) -> Iterator[WebhookDelivery]:
        """Its whole delivery log, newest first, a page at a time."""
        cursor = None
        while True:
            page = self.list_webhook_deliveries(webhook_id, status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def redeliver_webhook(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        """Sends one delivery again now, with the same `webhook-id`."""
        response = self._api.request(
            "POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", ok=(202,)
        )
        return self._api.parse(WebhookDelivery, response)

    # --- queue ---------------------------------------------------------------------------------------------
    def get_queue(self) -> Queue:
        """Jobs waiting and running (everyone's as counts, `yours` apart), broker depth, workers alive. A
        queued job's own place in line is `get_job(id).queue_position` / `.estimated_start_seconds`."""
        return self._api.parse(Queue, self._api.request("GET", "/v1/queue"))

    # --- usage ---------------------------------------------------------------------------------------------
    def usage(
        self,
        *,
        group: str = "day",
        since: str | None = None,
        until: str | None = None,
        owner: str | None = None,
    ) -> Usage:
        """GPU seconds, steps trained and images captioned per `group` ("day" or "month"; UTC dates
        `since`/`until`, both included), storage held now, and this key's quotas; `owner`: admin keys only."""
        params = _params(group=group, since=since, until=until, owner=owner)
        return self._api.parse(Usage, self._api.request("GET", "/v1/usage", params=params))

    # --- plan, presets, kohya_ss configs -------------------------------------------------------------------
    def plan(
        self,
        config: Mapping[str, Any],
        *,
        dataset_id: str | None = None,
        counts: Mapping[str, Any] | None = None,
    ) -> Plan:
        """A dry run (nothing stored) on a stored dataset or on `counts`
        (`{"subsets": [{"folder": "img/6_lisabp woman", "images": 34}]}`)."""
        body: dict[str, Any] = {"config": dict(config)}
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if counts is not None:
            body["counts"] = dict(counts)
        return self._api.parse(Plan, self._api.request("POST", "/v1/plan", json=body))

    def list_presets(self) -> list[Preset]:
        return self._api.parse_list(Preset, self._api.request("GET", "/v1/presets"), key="items")

    def get_preset(self, name: str) -> Preset:
        return self._api.parse(Preset, self._api.request("GET", f"/v1/presets/{name}"))

    def import_kohya_config(self, kohya_config: Mapping[str, Any]) -> KohyaImport:
        """A kohya_ss GUI config JSON as our config, with what was mapped, ignored or is unsupported."""
        return self._api.parse(
            KohyaImport, self._api.request("POST", "/v1/configs/kohya", json=dict(kohya_config))
        )


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _webhook_fields(webhook: str | None, webhook_events: Sequence[str] | None) -> dict[str, Any]:
    """A job's own `webhook` fields of a submission body (none without a webhook)."""
    if webhook_events is not None and webhook is None:
        raise LorabakeClientError("webhook_events needs a webhook")
    return _params(webhook=webhook, webhook_events=None if webhook_events is None else list(webhook_events))


def _form_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Multipart text fields: a list is sent comma-separated, as the server reads `webhook_events`."""
    return {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in values.items()}


def _upload_name(dataset: str | os.PathLike[str]) -> str:
    path = Path(dataset).expanduser()
    return path.name if path.is_file() else f"{path.resolve().name or 'dataset'}.zip"
