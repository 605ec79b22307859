"""/v1/datasets: upload once, look at what was accepted, review and edit captions, caption with a model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from starlette.concurrency import run_in_threadpool

from api.datasets.schemas import (
    CaptionEditResult,
    CaptionJobRequest,
    CaptionOut,
    CaptionsOut,
    DatasetJsonBody,
    DatasetList,
    DatasetOut,
    DatasetSummary,
    TagCount,
)
from api.datasets.service import (
    DatasetOptions,
    apply_caption_edit,
    captions_at,
    create_dataset,
    delete_dataset,
    owned_dataset,
    revision_origin,
    thumbnail_bytes,
)
from api.deps import DatasetJobSubmitter, DatasetsRead, DatasetsWrite, State
from api.direct_uploads.sources import REMOTE_SOURCES, one_source, received_from
from api.errors import validate_json_model
from api.idempotency import IdempotentRoute, idempotent
from api.jobs.limits import check_quota_limits
from api.jobs.schemas import JobOut
from api.jobs.submission import submit_caption_job
from api.openapi_doc import schema_ref
from api.pagination import Cursor, newest_first_page
from api.schemas import error_responses
from api.uploads import limited_request, read_json_object, require_file, save_upload
from api.webhooks.service import parse_job_webhook
from shared.datasets.captions import CaptionEdit, tag_frequency
from shared.db.models import Dataset, DatasetImage, is_object_id
from shared.errors import NotFoundError
from shared.jobs.retention import check_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=IdempotentRoute)

_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 429, 503)
# The route reads its body itself (multipart or JSON), so both are documented here.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "dataset": {"type": "string", "format": "binary", "description": "zip of images"},
                        "upload_id": {"type": "string", "description": "a zip put to POST /v1/uploads' URL"},
                        "dataset_url": {"type": "string", "description": "an http(s) URL of a zip to fetch"},
                        "options": {
                            "type": "string",
                            "description": "JSON: name, and for flat zips repeats, trigger_word, class_word",
                        },
                    },
                }
            },
            "application/json": {"schema": schema_ref(DatasetJsonBody)},
        },
    }
}


def parse_options(text: object) -> DatasetOptions:
    if text is None or (isinstance(text, str) and not text.strip()):
        return DatasetOptions()
    return validate_json_model(DatasetOptions, text, "options", "invalid_options")


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    operation_id="upload_dataset",
)
@idempotent()
async def upload_dataset(
    request: Request, response: Response, caller: DatasetJobSubmitter, state: State
) -> DatasetOut:
    """Store a dataset zip: multipart with a `dataset` zip (or an `upload_id` from POST /v1/uploads, or a
    `dataset_url` to fetch) and `options`, or a JSON body `{"upload_id" | "dataset_url": ..., "options":
    {...}}`. The response reports every file (accepted, converted, rejected) and warnings. A key whose
    `storage_bytes` quota it would pass gets a 429 `quota_exceeded`."""
    owner = caller.owner
    await run_in_threadpool(check_quota_limits, state, caller)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await read_json_object(request)
        field, source = one_source(body, REMOTE_SOURCES, missing="upload_id")
        options = parse_options(body.get("options"))
    else:
        limited = limited_request(request, state.settings.max_upload_bytes)
        async with limited.form(max_files=1, max_fields=8) as form:
            options = parse_options(form.get("options"))
            field, source = one_source(form, ("dataset", *REMOTE_SOURCES), missing="dataset")
            if field == "dataset":
                upload = require_file(source, "dataset")
                received = await run_in_threadpool(save_upload, upload, state.settings.work_dir / "uploads")
    if field in REMOTE_SOURCES:
        async with received_from(state, owner, field, source) as received:
            await run_in_threadpool(check_quota_limits, state, caller, adding_bytes=received.size)
            dataset_id = await run_in_threadpool(create_dataset, state, owner, options, received)
    else:
        try:
            await run_in_threadpool(check_quota_limits, state, caller, adding_bytes=received.size)
            dataset_id = await run_in_threadpool(create_dataset, state, owner, options, received)
        finally:
            received.path.unlink(missing_ok=True)
    response.headers["Location"] = f"/v1/datasets/{dataset_id}"
    with state.sessions() as session:
        return DatasetOut.of(owned_dataset(session, owner, dataset_id))


# Handlers open their session in their own thread and close it before they return (see api/jobs/routes.py).


@router.get("", response_model=DatasetList, responses=_ERRORS, operation_id="list_datasets")
def list_datasets(
    owner: DatasetsRead, state: State, limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Cursor = None
) -> DatasetList:
    """Your stored datasets, newest first; `next_cursor` fetches the next (older) page."""
    query = select(Dataset).where(Dataset.owner == owner).options(selectinload(Dataset.images))
    with state.sessions() as session:
        rows, next_cursor = newest_first_page(session, query, Dataset, owner, cursor, limit)
        return DatasetList(items=[DatasetSummary.of(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=_ERRORS, operation_id="get_dataset")
def get_dataset(dataset_id: str, owner: DatasetsRead, state: State) -> DatasetOut:
    """The dataset: its report (every file, accepted, converted or rejected), layout and warnings."""
    with state.sessions() as session:
        return DatasetOut.of(owned_dataset(session, owner, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=_ERRORS, operation_id="delete_dataset")
def remove_dataset(dataset_id: str, owner: DatasetsWrite, state: State) -> Response:
    """Deletes the dataset and its files; refused (409) while an unfinished job uses it."""
    with state.sessions() as session:
        delete_dataset(state, session, owned_dataset(session, owner, dataset_id))
    return Response(status_code=204)


@router.get(
    "/{dataset_id}/images/{image_id}/thumbnail",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "a JPEG",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    operation_id="get_image_thumbnail",
)
def get_thumbnail(dataset_id: str, image_id: str, owner: DatasetsRead, state: State) -> Response:
    """A small JPEG of one of the dataset's images."""
    with state.sessions() as session:
        owned_dataset(session, owner, dataset_id)
        image = session.get(DatasetImage, image_id) if is_object_id(image_id) else None
        if image is None or image.dataset_id != dataset_id or not image.thumbnail_key:
            raise NotFoundError(
                f"no image {image_id} in dataset {dataset_id}", details={"image_id": image_id}
            )
        check_dataset(image.dataset)  # a 410 once retention deleted it
        session.expunge(image)
    return Response(
        thumbnail_bytes(state, image),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=86400"},
    )


@router.get(
    "/{dataset_id}/captions",
    response_model=CaptionsOut,
    responses=_ERRORS,
    operation_id="get_dataset_captions",
)
def get_captions(
    dataset_id: str, owner: DatasetsRead, state: State, revision: Annotated[int | None, Query(ge=0)] = None
) -> CaptionsOut:
    """Current captions, or those of an older `revision` (what an earlier job trained on), with what made
    that revision (a caption job's revision names its captioner: method, model, options)."""
    with state.sessions() as session:
        dataset = owned_dataset(session, owner, dataset_id)
        wanted = dataset.caption_revision if revision is None else revision
        texts = captions_at(session, dataset, wanted)
        source, captioner = revision_origin(session, dataset, wanted)
        return CaptionsOut(
            dataset_id=dataset.id,
            revision=wanted,
            captions=[CaptionOut(image_id=i.id, path=i.path, caption=texts[i.id]) for i in dataset.images],
            source=source,
            captioner=captioner,
        )


@router.put(
    "/{dataset_id}/captions",
    response_model=CaptionEditResult,
    responses=_ERRORS,
    operation_id="edit_dataset_captions",
)
def edit_captions(
    dataset_id: str, edit: Annotated[CaptionEdit, Body()], owner: DatasetsWrite, state: State
) -> CaptionEditResult:
    """Set captions, find/replace, add or remove tags; each call is one new revision."""
    with state.sessions() as session:
        dataset = owned_dataset(session, owner, dataset_id)
        changed = apply_caption_edit(session, dataset, edit)
        session.commit()
        return CaptionEditResult(revision=dataset.caption_revision, changed=changed)


@router.get(
    "/{dataset_id}/tags", response_model=list[TagCount], responses=_ERRORS, operation_id="get_dataset_tags"
)
def get_tags(dataset_id: str, owner: DatasetsRead, state: State) -> list[TagCount]:
    """How often each tag appears in the training images' captions (Kohya's tag frequency)."""
    with state.sessions() as session:
        dataset = owned_dataset(session, owner, dataset_id)
        counts = tag_frequency(i.caption for i in dataset.images if not i.is_reg)
    return [TagCount(tag=tag, count=count) for tag, count in counts]


@router.post(
    "/{dataset_id}/caption",
    status_code=201,
    response_model=JobOut,
    responses=_ERRORS,
    operation_id="caption_dataset",
)
@idempotent()
async def caption_dataset(
    dataset_id: str,
    body: Annotated[CaptionJobRequest, Body()],
    response: Response,
    caller: DatasetJobSubmitter,
    state: State,
) -> JobOut:
    """Caption the dataset's training images as a job on the GPU queue: BLIP sentences, WD14 tags (anime SD
    models), or a vision-language model's detailed captions (`florence2`, `qwen_vl`, `joycaption`, for FLUX
    and the other flow-matching families); `method: auto` with `model_family` takes that family's captioner.
    The result becomes the dataset's next caption revision. Follow it at /v1/jobs/{id}, or give it a
    `webhook` (and `webhook_events`) as POST /v1/jobs takes them."""
    await run_in_threadpool(check_quota_limits, state, caller)  # a caption job uses the GPU too
    webhook = parse_job_webhook(body.webhook, body.webhook_events, state.settings)
    config = body.caption_config()
    job = await run_in_threadpool(
        submit_caption_job,
        state,
        caller.owner,
        dataset_id,
        config,
        webhook,
        api_key_id=caller.key_id,
        chosen_by="method 'auto'" if body.method == "auto" else None,
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)
