"""/v1/uploads: a URL to put a dataset zip straight into storage (a PUT, or a form POST that caps its size),
for POST /v1/datasets or /v1/jobs to take by `upload_id`; and, for the local store (embedded mode), the API's
own URL that takes that PUT or form."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import DatasetsWrite, State
from api.direct_uploads.form import FILE_FIELD, UploadFormParser, form_file_pieces
from api.direct_uploads.schemas import UploadCreate, UploadOut, UploadReceived
from api.direct_uploads.service import check_local_put, create_upload
from api.idempotency import IdempotentRoute, idempotent
from api.schemas import error_responses
from api.state import AppState
from api.uploads import limited_request
from shared.datasets.direct_uploads import CONTENT_TYPE, upload_key

router = APIRouter(tags=["uploads"], route_class=IdempotentRoute)

WRITE_EVERY = 1024 * 1024  # the body arrives in small pieces; each write is a hop to a thread
_ZIP_BODY = {
    "requestBody": {
        "required": True,
        # any Content-Type is taken (the headers POST /v1/uploads gives say application/zip)
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["key", FILE_FIELD],
                    # the fields `post.fields` names, as given, then the zip last
                    "properties": {
                        "key": {"type": "string"},
                        "Content-Type": {"type": "string"},
                        FILE_FIELD: {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/uploads",
    status_code=201,
    response_model=UploadOut,
    responses=error_responses(401, 403, 422, 429, 503),
    operation_id="create_upload",
    summary="Get a URL to upload a dataset zip to",
)
@idempotent()
async def post_upload(
    request: Request, owner: DatasetsWrite, state: State, body: Annotated[UploadCreate | None, Body()] = None
) -> UploadOut:
    """Where to send a dataset zip straight into storage, two ways: `post`, a multipart form (a presigned
    S3 POST whose policy caps the size; in embedded mode a URL of this API that caps it too), preferred
    where the size must be capped; or `url`, a PUT with the `headers` to send, which cannot cap it. Then
    give `upload_id` to POST /v1/datasets or /v1/jobs, which check the zip as they check an uploaded one.
    Each upload is used once; an owner holding `LORABAKE_MAX_PENDING_UPLOADS` unused ones gets a 429."""

    def local_url(upload_id: str, token: str) -> str:
        url = request.url_for("put_upload_object", upload_id=upload_id)
        return str(url.include_query_params(token=token))

    filename = body.filename if body else None
    return await run_in_threadpool(create_upload, state, owner, filename, local_url)


async def _store_pieces(state: AppState, upload_id: str, pieces: AsyncIterator[bytes]) -> int:
    """Writes the pieces to a temp file, then stores it as the upload's object; returns its size. Whatever
    refuses the body midway (413, 422) leaves nothing behind: not the temp file, not an object."""
    directory = state.settings.work_dir / "uploads"
    directory.mkdir(parents=True, exist_ok=True)
    out = tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False)  # noqa: SIM115
    path, size = Path(out.name), 0
    try:
        pending = bytearray()
        async for chunk in pieces:
            pending += chunk
            size += len(chunk)
            if len(pending) >= WRITE_EVERY:
                await run_in_threadpool(out.write, bytes(pending))
                pending.clear()
        await run_in_threadpool(out.write, bytes(pending))
        out.close()
        await run_in_threadpool(state.store.put_file, upload_key(upload_id), path, CONTENT_TYPE)
    finally:
        out.close()
        path.unlink(missing_ok=True)
    return size


@router.put(
    "/storage/uploads/{upload_id}",
    response_model=UploadReceived,
    responses=error_responses(403, 409, 413, 422, 503),
    operation_id="put_upload_object",
    summary="Upload a zip to the local store (embedded mode)",
    openapi_extra=_ZIP_BODY,
)
async def put_upload_object(
    upload_id: str, request: Request, state: State, token: Annotated[str, Query(max_length=200)] = ""
) -> UploadReceived:
    """What S3 is for a presigned PUT, when storage is a local folder: the URL POST /v1/uploads gave (its
    token is the credential, as a signature is in S3's), the zip as the whole body."""
    await run_in_threadpool(check_local_put, state, upload_id, token)
    limited = limited_request(request, state.settings.max_upload_bytes)
    size = await _store_pieces(state, upload_id, limited.stream())
    return UploadReceived(upload_id=upload_id, size_bytes=size)


@router.post(
    "/storage/uploads/{upload_id}",
    response_model=UploadReceived,
    responses=error_responses(403, 409, 413, 422, 503),
    operation_id="post_upload_form",
    summary="Upload a zip to the local store as a form (embedded mode)",
    openapi_extra=_FORM_BODY,
)
async def post_upload_form(
    upload_id: str, request: Request, state: State, token: Annotated[str, Query(max_length=200)] = ""
) -> UploadReceived:
    """What S3 is for a presigned POST, when storage is a local folder: the `post` form POST /v1/uploads
    gave (`fields`, then the zip as `file`) to its URL (the token checked before the body is read). A file
    over the upload's `max_bytes` is a 413 as soon as it is seen to be, and nothing of it is kept."""
    await run_in_threadpool(check_local_put, state, upload_id, token)
    form = UploadFormParser(upload_key(upload_id), state.settings.max_upload_bytes)
    size = await _store_pieces(state, upload_id, form_file_pieces(request, form))
    return UploadReceived(upload_id=upload_id, size_bytes=size)
