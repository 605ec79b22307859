"""Stored-dataset operations both sides need: its layout, and recording caption changes as a revision."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.datasets.layout import DatasetLayout
from shared.datasets.report import layout_from_json
from shared.db.models import CaptionRevision, Dataset


def dataset_layout(dataset: Dataset) -> DatasetLayout:
    by_subset: dict[str, list[str]] = {}
    for image in dataset.images:
        by_subset.setdefault(image.subset, []).append(image.path)
    return layout_from_json(dataset.layout, by_subset)


def image_sizes(dataset: Dataset) -> dict[str, tuple[int, int]]:
    return {image.path: (image.width, image.height) for image in dataset.images}


def record_captions(
    session: Session,
    dataset: Dataset,
    new_text: dict[str, str | None],
    source: str,
    captioner: dict[str, Any] | None = None,
) -> int:
    """Writes changed captions (by image id) as one revision; a caption job's revision also records the
    `captioner` that wrote it (method, model, every option)."""
    changes = []
    for image in dataset.images:
        if image.id in new_text and new_text[image.id] != image.caption:
            changes.append({"id": image.id, "before": image.caption, "after": new_text[image.id]})
            image.caption = new_text[image.id]
            image.caption_source = source
    if changes:
        dataset.caption_revision += 1
        session.add(
            CaptionRevision(
                dataset_id=dataset.id,
                revision=dataset.caption_revision,
                source=source,
                changes={"images": changes, **({"captioner": captioner} if captioner else {})},
            )
        )
    return len(changes)
