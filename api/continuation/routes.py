"""/v1/jobs/{id}/continue: train a succeeded job on by more epochs, as a new job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from api.continuation.schemas import ContinueRequest
from api.continuation.service import continue_job
from api.deps import JobSubmitter, State
from api.idempotency import IdempotentRoute, idempotent
from api.jobs.limits import check_limits
from api.jobs.schemas import JobOut
from api.schemas import error_responses
from api.webhooks.service import parse_job_webhook

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=IdempotentRoute)
_ERRORS = error_responses(401, 403, 404, 409, 410, 422, 429, 503)


@router.post(
    "/{job_id}/continue",
    status_code=201,
    response_model=JobOut,
    responses=_ERRORS,
    operation_id="continue_job",
)
@idempotent()
async def create_continuation(
    job_id: str,
    body: Annotated[ContinueRequest, Body()],
    response: Response,
    caller: JobSubmitter,
    state: State,
) -> JobOut:
    """Queue a new job that trains this succeeded job on by `epochs` more, from its final resume state,
    with the same config and dataset revision; its epochs are numbered on (3 + 2 writes epochs 4 and 5, the
    files of a 5-epoch run). `continued_from` names the source, whose files stay as they are. A job that did
    not succeed is a 409 `job_not_succeeded`; one whose resume state is gone a 409 `resume_state_gone`; an
    expired one a 410 `job_expired`; another owner's a 404."""
    await run_in_threadpool(check_limits, state, caller)
    webhook = parse_job_webhook(body.webhook, body.webhook_events, state.settings)
    job = await run_in_threadpool(continue_job, state, caller, job_id, body, webhook)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)
