"""Where a submitted dataset comes from: exactly one of the fields a request may name it by, and, for an
upload or a URL, the local temp file it becomes for as long as the submission takes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.direct_uploads.service import fetch_dataset_url, settle_upload, take_upload
from api.state import AppState
from api.uploads import ReceivedFile
from shared.errors import LorabakeError

REMOTE_SOURCES = ("upload_id", "dataset_url")


def one_source(values: Mapping[str, Any], names: Sequence[str], missing: str) -> tuple[str, Any]:
    """The one field of `names` that `values` (a JSON body or a form) sets, and its value; none is a 422
    naming `missing`, more than one a 422 naming the second. All but a multipart `dataset` are strings."""
    given = [name for name in names if values.get(name) is not None and values.get(name) != ""]
    if not given:
        raise LorabakeError(
            f"give the dataset as one of: {', '.join(names)}",
            code="missing_field",
            details={"field": missing},
            status_code=422,
        )
    if len(given) > 1:
        raise LorabakeError(
            f"give only one of {', '.join(given)}",
            code="conflicting_fields",
            details={"field": given[1], "fields": given},
            status_code=422,
        )
    name = given[0]
    value = values.get(name)
    if name != "dataset" and not isinstance(value, str):
        raise LorabakeError(
            f"{name} must be a string", code="invalid_field", details={"field": name}, status_code=422
        )
    return name, value


@asynccontextmanager
async def received_from(state: AppState, owner: str, field: str, value: str) -> AsyncIterator[ReceivedFile]:
    """The dataset named by `upload_id` or `dataset_url` as a local file, removed afterwards. An upload is
    used up by the submission whatever its outcome, except an outage (the client may retry with it)."""
    if field == "dataset_url":
        received = await run_in_threadpool(fetch_dataset_url, state, value)
        try:
            yield received
        finally:
            received.path.unlink(missing_ok=True)
        return
    assert field == "upload_id", field
    received = await run_in_threadpool(take_upload, state, owner, value)
    try:
        yield received
    except Exception as exc:  # (a cancelled request leaves it used; its object goes at expiry)
        await run_in_threadpool(settle_upload, state, value, exc)
        raise
    else:
        await run_in_threadpool(settle_upload, state, value, None)
    finally:
        received.path.unlink(missing_ok=True)
