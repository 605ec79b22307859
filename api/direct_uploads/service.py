"""Datasets that do not pass through the API's request body: presigned uploads and dataset URLs, each turned
into the same local temp file (ReceivedFile) a multipart upload becomes, for the same checks."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.direct_uploads.schemas import UploadForm, UploadOut
from api.jobs.limits import LimitExceeded
from api.state import AppState
from api.uploads import ReceivedFile, printable_name
from shared.datasets.direct_uploads import (
    CONTENT_TYPE,
    claim,
    forget,
    is_expired,
    owned_upload,
    pending_uploads,
    release,
    upload_key,
    upload_prefix,
    upload_used,
)
from shared.datasets.remote import FetchLimits, LocalZip, copy_capped, fetch_zip, too_large
from shared.db.models import Upload, as_utc, is_object_id, new_id, utcnow
from shared.errors import LorabakeError
from shared.outages import is_outage
from shared.storage import PresignedPost

# (upload id, token) -> the API's own URL that takes the PUT and the form POST, for a store that signs no
# URLs (local)
LocalUrl = Callable[[str, str], str]


def _received(local: LocalZip) -> ReceivedFile:
    return ReceivedFile(local.path, printable_name(local.filename), local.size, local.sha256)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pending_cap(session: Session, owner: str, limit: int, now: datetime) -> None:
    """At most `limit` uploads of one owner unused and unexpired at once (0: no cap), so that nobody fills
    the bucket with zips never taken. Counted, not locked: two requests racing may both get in."""
    if limit <= 0:
        return
    pending, first_expiry = pending_uploads(session, owner, now)
    if pending < limit or first_expiry is None:
        return
    wait = max(1, math.ceil((first_expiry - now).total_seconds()))  # when the first one expires unused
    raise LimitExceeded(
        f"{pending} uploads are waiting to be used, the limit (max_pending_uploads {limit}): use one "
        "(upload_id in POST /v1/datasets or /v1/jobs) or wait until one expires",
        code="too_many_uploads",
        retry_after=wait,
        details={"limit": "max_pending_uploads", "value": limit},
    )


def _signed(state: AppState, upload_id: str) -> tuple[str, PresignedPost] | None:
    """The store's own PUT URL and POST form for the upload; None for a store that signs none (local)."""
    key = upload_key(upload_id)
    url = state.store.presigned_put_url(key, CONTENT_TYPE)
    post = state.store.presigned_post(key, CONTENT_TYPE, state.settings.max_upload_bytes)
    return (url, post) if url is not None and post is not None else None


def create_upload(state: AppState, owner: str, filename: str | None, local_url: LocalUrl) -> UploadOut:
    settings = state.settings
    upload_id = new_id()
    now = utcnow()
    url_expires_at = now + timedelta(seconds=settings.presign_expiry_seconds)
    signed, token = _signed(state, upload_id), None
    if signed is None:
        token = secrets.token_urlsafe(32)
        url = local_url(upload_id, token)  # the same URL takes the PUT and the form POST (api/direct_uploads)
        post = PresignedPost(url=url, fields={"key": upload_key(upload_id), "Content-Type": CONTENT_TYPE})
    else:
        url, post = signed
    upload = Upload(
        id=upload_id,
        owner=owner,
        filename=printable_name(filename),
        token_sha256=_token_hash(token) if token else None,
        created_at=now,
        url_expires_at=url_expires_at,
        expires_at=url_expires_at + timedelta(seconds=settings.upload_grace_seconds),
    )
    with state.sessions() as session:
        _pending_cap(session, owner, settings.max_pending_uploads, now)
        session.add(upload)
        session.commit()
    return UploadOut(
        upload_id=upload_id,
        url=url,
        headers={"Content-Type": CONTENT_TYPE},
        post=UploadForm(url=post.url, fields=post.fields),
        max_bytes=settings.max_upload_bytes,
        url_expires_at=upload.url_expires_at,
        expires_at=upload.expires_at,
    )


def _bad_url(message: str, code: str = "invalid_upload_url") -> LorabakeError:
    return LorabakeError(message, code=code, details={"field": "token"}, status_code=403)


def check_local_put(state: AppState, upload_id: str, token: str) -> None:
    """What S3 checks of a presigned PUT, for the API's own upload URL (the local store): a token of this
    upload (unknown uploads look the same: 403), not expired, not used."""
    with state.sessions() as session:
        upload = session.get(Upload, upload_id) if is_object_id(upload_id) else None
        if upload is None or upload.token_sha256 is None:
            raise _bad_url("this upload URL is not valid")
        if not hmac.compare_digest(upload.token_sha256, _token_hash(token)):
            raise _bad_url("this upload URL is not valid")
        if utcnow() >= as_utc(upload.url_expires_at):
            raise _bad_url("this upload URL has expired; create another upload", "upload_url_expired")
        if upload.used_at is not None:
            raise upload_used(upload_id)


def take_upload(state: AppState, owner: str, upload_id: str) -> ReceivedFile:
    """The upload's zip as a local temp file, the upload marked used. Refused (and left usable) when its
    file was never PUT; refused and deleted when it expired or is over the size limit."""
    max_bytes = state.settings.max_upload_bytes
    with state.sessions() as session:
        upload = owned_upload(session, owner, upload_id)
        expired, used, filename = is_expired(upload, utcnow()), upload.used_at is not None, upload.filename
    if expired:
        forget(state.sessions, state.store, upload_id)
        raise LorabakeError(
            f"upload {upload_id} has expired; create another",
            code="upload_expired",
            details={"field": "upload_id"},
            status_code=422,
        )
    if used:
        raise upload_used(upload_id)
    key = upload_key(upload_id)
    size = state.store.object_size(key)
    if size is None:
        raise LorabakeError(
            f"nothing was uploaded to upload {upload_id} yet: PUT the zip to its URL first",
            code="upload_not_received",
            details={"field": "upload_id"},
            status_code=422,
        )
    with state.sessions() as session:
        if not claim(session, upload_id):
            raise upload_used(upload_id)
    try:
        if size > max_bytes:  # a PUT cannot cap the size itself (nor can an S3 that ignores a POST policy)
            raise too_large("upload_id", max_bytes)
        local = copy_capped(
            state.store.iter_bytes(key), state.settings.work_dir / "uploads", filename, max_bytes, "upload_id"
        )
    except BaseException as exc:
        settle_upload(state, upload_id, exc)
        raise
    return _received(local)


def settle_upload(state: AppState, upload_id: str, exc: BaseException | None) -> None:
    """After a dataset or job took the upload: used up (its object deleted), unless what failed was an
    outage, in which case the same upload can be tried again."""
    if exc is not None and is_outage(exc):
        try:
            with state.sessions() as session:
                release(session, upload_id)
            return
        except Exception:  # the database is what is down: the upload stays used, deleted at expiry
            pass
    state.remove_objects(upload_prefix(upload_id))


def fetch_dataset_url(state: AppState, url: str) -> ReceivedFile:
    settings = state.settings
    limits = FetchLimits(
        max_bytes=settings.max_upload_bytes,
        timeout_seconds=settings.dataset_url_timeout_seconds,
        max_seconds=settings.dataset_url_max_seconds,
        allow_private=settings.allow_private_urls,
    )
    return _received(fetch_zip(url, settings.work_dir / "uploads", limits))
