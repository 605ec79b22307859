"""/v1/jobs/{id}/comparisons: a training job's saved epochs against LoRA weights, as images and grids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from api.comparisons.schemas import ComparisonRequest
from api.comparisons.service import submit_comparison
from api.deps import JobSubmitter, State
from api.idempotency import IdempotentRoute, idempotent
from api.jobs.limits import check_limits
from api.jobs.schemas import JobOut
from api.schemas import error_responses
from api.webhooks.service import parse_job_webhook

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=IdempotentRoute)
_ERRORS = error_responses(401, 403, 404, 409, 422, 429, 503)


@router.post(
    "/{job_id}/comparisons",
    status_code=201,
    response_model=JobOut,
    responses=_ERRORS,
    operation_id="create_comparison",
)
@idempotent()
async def create_comparison(
    job_id: str,
    body: Annotated[ComparisonRequest, Body()],
    response: Response,
    caller: JobSubmitter,
    state: State,
) -> JobOut:
    """Queue a `compare` job over this training job's saved epochs: one image per (prompt, epoch, weight,
    seed), artifact kind `image`, and one labelled grid per prompt (rows: epochs, columns: weights), kind
    `grid`. A weight is what `<lora:NAME:WEIGHT>` means in A1111: the multiplier on the LoRA's delta in the
    U-Net and the text encoder(s); 0 is the base model. A job with no saved epoch is a 409 `no_saved_lora`;
    another owner's job a 404. Follow the new job at /v1/jobs/{id}."""
    await run_in_threadpool(check_limits, state, caller)
    webhook = parse_job_webhook(body.webhook, body.webhook_events, state.settings)
    job = await run_in_threadpool(submit_comparison, state, caller, job_id, body, webhook)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)
