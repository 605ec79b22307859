"""/v1/jobs: submit, list, inspect, cancel, artifacts, events."""

from __future__ import annotations

import asyncio
import functools
import json
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import FormData

from api.deps import JobsRead, JobSubmitter, JobsWrite, State
from api.direct_uploads.sources import REMOTE_SOURCES, one_source, received_from
from api.idempotency import IdempotentRoute, idempotent
from api.jobs.events import Event, event_of
from api.jobs.limits import check_limits, check_quota_limits
from api.jobs.schemas import ArtifactOut, JobJsonBody, JobList, JobOut
from api.jobs.submission import parse_config, submit_dataset_job, submit_job
from api.openapi_doc import schema_ref
from api.pagination import Cursor, newest_first_page
from api.schemas import error_responses
from api.state import AppState
from api.uploads import ReceivedFile, limited_request, read_json_object, require_file, save_upload
from api.webhooks.service import parse_job_webhook
from shared.db.models import Artifact, Job, JobEvent, JobStatus, is_object_id
from shared.errors import LorabakeError, NotFoundError
from shared.jobs.retention import check_job_files
from shared.jobs.state import request_cancel

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=IdempotentRoute)

_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 429, 503)
KEEP_ALIVE_SECONDS = 15.0
# The route reads its body itself (multipart or JSON), so both are documented here.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["config"],
                    "properties": {
                        "dataset": {"type": "string", "format": "binary", "description": "zip of images"},
                        "dataset_id": {"type": "string", "description": "a stored dataset, instead of a zip"},
                        "upload_id": {"type": "string", "description": "a zip put to POST /v1/uploads' URL"},
                        "dataset_url": {"type": "string", "description": "an http(s) URL of a zip to fetch"},
                        "config": {"type": "string", "description": "TrainingConfig as JSON text"},
                        "network_weights": {
                            "type": "string",
                            "format": "binary",
                            "description": "a LoRA .safetensors to start from (config.network_weights)",
                        },
                        "webhook": {"type": "string", "description": "URL that receives this job's events"},
                        "queue": {
                            "type": "string",
                            "description": "a named queue (GET /v1/queue); default: by the model's family",
                        },
                        "webhook_events": {
                            "type": "string",
                            "description": "event types for `webhook`, comma-separated; default: all",
                        },
                    },
                }
            },
            "application/json": {"schema": schema_ref(JobJsonBody)},
        },
    }
}


def network_weights_part(form: FormData, directory: Path) -> ReceivedFile | None:
    """The multipart part `network_weights` (a LoRA .safetensors to start from) as a local temp file."""
    part = form.get("network_weights")
    if part is None or part == "":
        return None
    return save_upload(require_file(part, "network_weights"), directory)


def _owned_job(session: Session, owner: str, job_id: str) -> Job:
    job = session.get(Job, job_id, options=[selectinload(Job.artifacts)]) if is_object_id(job_id) else None
    if job is None or job.owner != owner:  # another owner's job is indistinguishable from a missing one
        raise NotFoundError(f"no job {job_id}", details={"job_id": job_id})
    return job


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    operation_id="create_job",
)
@idempotent()
async def create_job(request: Request, response: Response, caller: JobSubmitter, state: State) -> JobOut:
    """Queue a training job: multipart with a `dataset` zip (or a stored `dataset_id`, an `upload_id` from
    POST /v1/uploads, a `dataset_url` to fetch) and `config`, or a JSON body `{"dataset_id" | "upload_id" |
    "dataset_url": ..., "config": {...}}`. Nothing is stored unless all of it checks out. A key past its
    limits gets a 429 with Retry-After before its upload is read."""
    owner, key_id = caller.owner, caller.key_id
    await run_in_threadpool(check_limits, state, caller)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await read_json_object(request)
        field, source = one_source(body, ("dataset_id", *REMOTE_SOURCES), missing="dataset_id")
        config = parse_config(body.get("config"))
        webhook = parse_job_webhook(body.get("webhook"), body.get("webhook_events"), state.settings)
        queue = body.get("queue")
        if field == "dataset_id":
            job = await run_in_threadpool(
                submit_dataset_job, state, owner, config, source, webhook, api_key_id=key_id, queue=queue
            )
        else:
            async with received_from(state, owner, field, source) as received:
                await run_in_threadpool(check_quota_limits, state, caller, adding_bytes=received.size)
                job = await run_in_threadpool(
                    submit_job, state, owner, config, received, webhook, api_key_id=key_id, queue=queue
                )
    else:
        limited = limited_request(request, state.settings.max_upload_bytes)
        async with limited.form(max_files=2, max_fields=12) as form:
            config = parse_config(form.get("config"))
            webhook = parse_job_webhook(form.get("webhook"), form.get("webhook_events"), state.settings)
            queue = form.get("queue")
            field, source = one_source(form, ("dataset", "dataset_id", *REMOTE_SOURCES), missing="dataset")
            weights = await run_in_threadpool(network_weights_part, form, state.settings.work_dir / "uploads")
            submit = functools.partial(submit_job, network_weights=weights)
            try:
                if field == "dataset_id":
                    job = await run_in_threadpool(
                        functools.partial(submit_dataset_job, network_weights=weights),
                        state, owner, config, source, webhook, api_key_id=key_id, queue=queue,
                    )  # fmt: skip
                elif field in REMOTE_SOURCES:
                    async with received_from(state, owner, field, source) as received:
                        await run_in_threadpool(check_quota_limits, state, caller, adding_bytes=received.size)
                        job = await run_in_threadpool(
                            submit, state, owner, config, received, webhook, api_key_id=key_id, queue=queue
                        )
                else:
                    upload = require_file(source, "dataset")
                    received = await run_in_threadpool(
                        save_upload, upload, state.settings.work_dir / "uploads"
                    )
                    try:
                        await run_in_threadpool(check_quota_limits, state, caller, adding_bytes=received.size)
                        job = await run_in_threadpool(
                            submit, state, owner, config, received, webhook, api_key_id=key_id, queue=queue
                        )
                    finally:
                        received.path.unlink(missing_ok=True)
            finally:
                if weights is not None:
                    weights.path.unlink(missing_ok=True)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


# Handlers open their session in their own thread and close it before they return: a connection held
# until FastAPI's dependency teardown (which needs a thread of its own) deadlocks a full thread pool.


@router.get("", response_model=JobList, responses=_ERRORS, operation_id="list_jobs")
def list_jobs(
    owner: JobsRead,
    state: State,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Cursor = None,
) -> JobList:
    """Newest first. `next_cursor` fetches the next (older) page."""
    query = select(Job).where(Job.owner == owner).options(selectinload(Job.artifacts))
    if status is not None:
        query = query.where(Job.status == status.value)
    with state.sessions() as session:
        jobs, next_cursor = newest_first_page(session, query, Job, owner, cursor, limit)
        items = [JobOut.of(j) for j in jobs]
    standing = state.job_views.standing
    for item in items:  # queued ones with their place, as GET /v1/jobs/{id} gives it
        if item.status == JobStatus.queued:
            for name, value in standing.standing(item.id, item.queue).items():
                setattr(item, name, value)
    return JobList(items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS, operation_id="get_job")
async def get_job(job_id: str, owner: JobsRead, state: State) -> Response:
    """The job: status, progress, plan, its files. Poll it, or follow /events."""
    return Response(await state.job_views.body(owner, job_id), media_type="application/json")


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=JobOut, responses=_ERRORS, operation_id="cancel_job"
)
def cancel_job(job_id: str, owner: JobsWrite, state: State) -> JobOut:
    """Stops a job between two steps; epochs already saved stay downloadable."""
    with state.sessions() as session:
        job = _owned_job(session, owner, job_id)
        request_cancel(session, job)
        session.commit()
        state.job_views.standing.forget(job.queue)  # the jobs behind it move up
        return JobOut.of(job)


@router.get(
    "/{job_id}/artifacts", response_model=list[ArtifactOut], responses=_ERRORS, operation_id="list_artifacts"
)
def list_artifacts(job_id: str, owner: JobsRead, state: State) -> list[ArtifactOut]:
    """The job's files: each saved epoch's LoRA, samples (with their prompt), captions."""
    with state.sessions() as session:
        return [ArtifactOut.of(a) for a in _owned_job(session, owner, job_id).artifacts]


@router.get(
    "/{job_id}/artifacts/{artifact_id}",
    response_class=StreamingResponse,
    responses={
        **_ERRORS,
        **error_responses(410),
        200: {
            "description": "the file (the embedded mode streams it)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        307: {"description": "to a presigned URL of the file in storage (S3)"},
    },
    operation_id="download_artifact",
)
def download_artifact(job_id: str, artifact_id: str, owner: JobsRead, state: State) -> Response:
    """Redirects to a presigned storage URL (S3), or streams the file (embedded mode). A 410 naming the date
    once the job's retention ran out (its files are deleted; the job's record stays)."""
    with state.sessions() as session:
        job = _owned_job(session, owner, job_id)
        artifact = session.get(Artifact, artifact_id) if is_object_id(artifact_id) else None
        if artifact is None or artifact.job_id != job_id:
            raise NotFoundError(
                f"no artifact {artifact_id} in job {job_id}", details={"artifact_id": artifact_id}
            )
        check_job_files(job, artifact)  # 410 naming the date, from the job's expiry on
        session.expunge(artifact)
    url = state.store.presigned_url(artifact.object_key, artifact.name)
    if url:
        return RedirectResponse(url, status_code=307)
    return StreamingResponse(
        iterate_in_threadpool(state.store.iter_bytes(artifact.object_key)),
        media_type=mimetypes.guess_type(artifact.name)[0] or "application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{artifact.name}"',
            "Content-Length": str(artifact.size_bytes),
            "ETag": f'"{artifact.sha256}"',
        },
    )


def _last_event_id(request: Request, after: int) -> int:
    raw = request.headers.get("last-event-id")
    if raw is None:
        return after
    if not raw.isdigit() or len(raw) > 18:
        raise LorabakeError(
            "Last-Event-ID must be the id of an event this stream sent (a non-negative integer)",
            code="invalid_last_event_id",
            details={"field": "Last-Event-ID"},
            status_code=422,
        )
    return int(raw)


def _replay(state: AppState, job_id: str, since: int) -> tuple[list[Event], bool]:
    """The job's events after `since`, from the database, and whether the job has ended."""
    with state.sessions() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > since).order_by(JobEvent.id)
        )
        events = [event_of(row) for row in rows]
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return events, status is None or JobStatus(status).is_terminal


def _is_end(event: Event) -> bool:
    return event.type == "status" and JobStatus(event.data.get("status", "queued")).is_terminal


def _sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **_ERRORS,
        200: {
            "description": "server-sent events (`id`, `event`: status/stage/progress/artifact, `data`: JSON)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
    operation_id="stream_job_events",
)
async def stream_events(
    job_id: str, request: Request, owner: JobsRead, state: State, after: Annotated[int, Query(ge=0)] = 0
) -> StreamingResponse:
    """Server-sent events: status changes, saved files and progress, until the job ends.
    Reconnecting clients resume with `Last-Event-ID` (or `?after=`)."""
    since = _last_event_id(request, after)

    def check_owner() -> None:
        with state.sessions() as session:
            _owned_job(session, owner, job_id)

    await run_in_threadpool(check_owner)

    async def generate() -> AsyncIterator[str]:
        sent: set[int] = set()
        async with state.events.watch(job_id) as live:
            replayed, ended = await run_in_threadpool(_replay, state, job_id, since)
            for event in replayed:
                sent.add(event.id)
                yield _sse(event)
            if ended:
                return
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(live.get(), KEEP_ALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"  # a comment line keeps proxies from closing an idle stream
                    continue
                if event is None:  # the server is stopping; the client resumes with Last-Event-ID
                    return
                if event.id in sent or event.id <= since:
                    continue
                sent.add(event.id)
                yield _sse(event)
                if _is_end(event):
                    return

    return StreamingResponse(
        generate(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
