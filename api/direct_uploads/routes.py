"""/v1/uploads: a URL to put a dataset zip straight into storage, for POST /v1/datasets or /v1/jobs to take
by `upload_id`; and, for the local store (embedded mode), the API's own URL that takes that PUT."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import DatasetsWrite, State
from api.direct_uploads.schemas import UploadCreate, UploadOut, UploadReceived
from api.direct_uploads.service import check_local_put, create_upload
from api.schemas import error_responses
from api.uploads import limited_request
from shared.datasets.direct_uploads import CONTENT_TYPE, upload_key

router = APIRouter(tags=["uploads"])

WRITE_EVERY = 1024 * 1024  # the body arrives in small pieces; each write is a hop to a thread
_ZIP_BODY = {
    "requestBody": {
        "required": True,
        # any Content-Type is taken (the headers POST /v1/uploads gives say application/zip)
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/v1/uploads",
    status_code=201,
    response_model=UploadOut,
    responses=error_responses(401, 403, 422, 503),
    operation_id="create_upload",
    summary="Get a URL to upload a dataset zip to",
)
async def post_upload(
    request: Request, owner: DatasetsWrite, state: State, body: Annotated[UploadCreate | None, Body()] = None
) -> UploadOut:
    """A URL to PUT a dataset zip to, straight into storage (a presigned S3 URL; in embedded mode a
    URL of this API), with the headers to send. Then give `upload_id` to POST /v1/datasets or /v1/jobs,
    which check the zip as they check an uploaded one. Each upload is used once."""

    def local_url(upload_id: str, token: str) -> str:
        url = request.url_for("put_upload_object", upload_id=upload_id)
        return str(url.include_query_params(token=token))

    filename = body.filename if body else None
    return await run_in_threadpool(create_upload, state, owner, filename, local_url)


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
    directory = state.settings.work_dir / "uploads"
    directory.mkdir(parents=True, exist_ok=True)
    out = tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False)  # noqa: SIM115
    path, size = Path(out.name), 0
    try:
        pending = bytearray()
        async for chunk in limited.stream():
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
    return UploadReceived(upload_id=upload_id, size_bytes=size)
