"""Stored datasets: create from an upload, edit captions as revisions, snapshot captions for a job."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.state import AppState
from api.uploads import ReceivedFile
from shared.datasets.captions import CaptionEdit, captions_at_revision, edit_caption
from shared.datasets.report import analyze_dataset_zip, layout_to_json
from shared.datasets.stored import record_captions
from shared.db.models import CaptionRevision, Dataset, DatasetImage, Job, JobStatus, is_object_id, new_id
from shared.errors import ConflictError, LorabakeError, NotFoundError


class DatasetOptions(BaseModel):
    """How to read a flat zip (Kohya folders carry their own repeats, trigger and class)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    repeats: int = Field(1, ge=1, le=10_000)
    trigger_word: str | None = Field(None, max_length=200)
    class_word: str | None = Field(None, max_length=200)


def owned_dataset(session: Session, owner: str, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id) if is_object_id(dataset_id) else None
    if dataset is None or dataset.owner != owner:
        raise NotFoundError(f"no dataset {dataset_id}", details={"dataset_id": dataset_id})
    return dataset


def create_dataset(state: AppState, owner: str, options: DatasetOptions, upload: ReceivedFile) -> str:
    analysis = analyze_dataset_zip(
        upload.path,
        state.settings.zip_limits,
        default_repeats=options.repeats,
        trigger=options.trigger_word,
        class_token=options.class_word,
    )
    dataset_id = new_id()
    prefix = f"datasets/{dataset_id}/"
    try:
        state.store.put_file(prefix + "dataset.zip", upload.path, "application/zip")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for image in analysis.images:
                image_id = new_id()
                thumb = Path(tmp) / f"{image_id}.jpg"
                thumb.write_bytes(image.thumbnail)
                key = f"{prefix}thumbs/{image_id}.jpg"
                state.store.put_file(key, thumb, "image/jpeg")
                rows.append(
                    DatasetImage(
                        id=image_id,
                        dataset_id=dataset_id,
                        path=image.path,
                        subset=image.subset,
                        is_reg=image.is_reg,
                        width=image.width,
                        height=image.height,
                        format=image.format,
                        content_sha256=image.content_sha256,
                        caption=image.caption,
                        caption_source="file" if image.caption is not None else "none",
                        thumbnail_key=key,
                    )
                )
        with state.sessions() as session:
            session.add(
                Dataset(
                    id=dataset_id,
                    owner=owner,
                    name=options.name or upload.filename,
                    object_key=prefix + "dataset.zip",
                    bytes=upload.size,
                    sha256=upload.sha256,
                    layout=layout_to_json(analysis.layout),
                    report=analysis.report(),
                )
            )
            session.flush()  # the parent row first: Postgres checks the images' foreign key
            session.add_all(rows)
            session.commit()
    except BaseException:
        state.remove_objects(prefix)
        raise
    return dataset_id


def apply_caption_edit(session: Session, dataset: Dataset, edit: CaptionEdit, source: str = "edit") -> int:
    """Applies an edit as one new revision; returns how many captions changed."""
    if edit.expected_revision is not None and edit.expected_revision != dataset.caption_revision:
        raise ConflictError(
            f"captions are at revision {dataset.caption_revision}, not {edit.expected_revision}; reload them",
            code="caption_revision_conflict",
            details={"revision": dataset.caption_revision},
        )
    images = {image.id: image for image in dataset.images}
    new_text = {image_id: image.caption for image_id, image in images.items()}
    for item in edit.set:
        if item.image_id not in images:
            raise LorabakeError(
                f"no image {item.image_id} in dataset {dataset.id}",
                code="unknown_image",
                details={"field": "set.image_id", "image_id": item.image_id},
                status_code=422,
            )
        new_text[item.image_id] = item.caption
    scope = edit.image_ids if edit.image_ids is not None else list(images)
    for image_id in scope:
        if image_id not in images:
            raise LorabakeError(
                f"no image {image_id} in dataset {dataset.id}",
                code="unknown_image",
                details={"field": "image_ids", "image_id": image_id},
                status_code=422,
            )
        new_text[image_id] = edit_caption(new_text[image_id], edit)
    return record_captions(session, dataset, new_text, source)


def captions_at(session: Session, dataset: Dataset, revision: int) -> dict[str, str | None]:
    if not 0 <= revision <= dataset.caption_revision:
        raise LorabakeError(
            f"revision must be between 0 and {dataset.caption_revision}",
            code="invalid_revision",
            details={"field": "revision"},
            status_code=422,
        )
    history = session.execute(
        select(CaptionRevision.revision, CaptionRevision.changes).where(
            CaptionRevision.dataset_id == dataset.id
        )
    )
    current = {image.id: image.caption for image in dataset.images}
    return captions_at_revision(current, revision, ((rev, ch["images"]) for rev, ch in history))


def revision_origin(session: Session, dataset: Dataset, revision: int) -> tuple[str, dict[str, Any] | None]:
    """What made `revision`: its source (`upload` for revision 0) and, for a caption job's, its captioner."""
    if revision == 0:
        return "upload", None
    row = session.execute(
        select(CaptionRevision.source, CaptionRevision.changes).where(
            CaptionRevision.dataset_id == dataset.id, CaptionRevision.revision == revision
        )
    ).first()
    if row is None:
        return "unknown", None
    return row.source, row.changes.get("captioner")


def store_caption_snapshot(state: AppState, job_id: str, dataset: Dataset) -> str:
    """The exact captions a job trains on, kept beside the job (dataset edits later don't change them)."""
    snapshot = {
        "dataset_id": dataset.id,
        "revision": dataset.caption_revision,
        "captions": {image.path: image.caption for image in dataset.images},
    }
    key = f"jobs/{job_id}/captions.json"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(snapshot, fh)
    try:
        state.store.put_file(key, Path(fh.name), "application/json")
    finally:
        Path(fh.name).unlink(missing_ok=True)
    return key


def active_jobs(session: Session, dataset_id: str) -> list[str]:
    running = [s.value for s in JobStatus if not s.is_terminal]
    return list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(running))))


def delete_dataset(state: AppState, session: Session, dataset: Dataset) -> None:
    busy = active_jobs(session, dataset.id)
    if busy:
        raise ConflictError(
            f"dataset {dataset.id} is used by unfinished jobs: {', '.join(busy)}",
            code="dataset_in_use",
            details={"jobs": busy},
        )
    # what the foreign key would do (SET NULL), but through the ORM so the jobs' updated_at moves too:
    # a job's rendered view is kept by that version (api/jobs/views.py)
    session.execute(
        update(Job).where(Job.dataset_id == dataset.id).values(dataset_id=None),
        execution_options={"synchronize_session": False},
    )
    session.delete(dataset)
    session.commit()
    state.remove_objects(f"datasets/{dataset.id}/")


def thumbnail_bytes(state: AppState, image: DatasetImage) -> bytes:
    assert image.thumbnail_key
    buf = io.BytesIO()
    for chunk in state.store.iter_bytes(image.thumbnail_key):
        buf.write(chunk)
    return buf.getvalue()
