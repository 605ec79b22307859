"""/v1/generations: a preview image from a base model and any of the caller's LoRAs (A1111 prompt tags)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from api.deps import JobSubmitter, State
from api.generations.schemas import GenerationRequest
from api.generations.service import submit_generation
from api.idempotency import IdempotentRoute, idempotent
from api.jobs.limits import check_limits
from api.jobs.schemas import JobOut
from api.schemas import error_responses
from api.webhooks.service import parse_job_webhook

router = APIRouter(prefix="/v1/generations", tags=["generations"], route_class=IdempotentRoute)
_ERRORS = error_responses(401, 403, 422, 429, 503)


@router.post("", status_code=201, response_model=JobOut, responses=_ERRORS, operation_id="create_generation")
@idempotent()
async def create_generation(
    body: Annotated[GenerationRequest, Body()], response: Response, caller: JobSubmitter, state: State
) -> JobOut:
    """Queue one image as a `generate` job: `prompt` may hold `<lora:NAME:WEIGHT>` tags (your LoRA files by
    name; weights summed per name, may be negative; `<lora:NAME:TE:UNET>` too) and Kohya's `--n --w --h --d
    --l --s --ss` flags. An unknown or another owner's NAME is a 422 `unknown_lora`, a LoRA of another model
    family a 422 `lora_family_mismatch`, both naming the tag; nothing is stored then. The image becomes the
    job's `image` artifact, with its settings in A1111's PNG `parameters` text. Follow it at /v1/jobs/{id}."""
    await run_in_threadpool(check_limits, state, caller)
    webhook = parse_job_webhook(body.webhook, body.webhook_events, state.settings)
    job = await run_in_threadpool(submit_generation, state, caller, body, webhook)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)
