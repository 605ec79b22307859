"""Captioning as the first stage of a training job (`config.captioning`): caption the prepared dataset
folder in place, writing each new caption as the image's `.txt`, before the engine reads the folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.config.captioning import CaptionConfig
from shared.config.spec import TrainingConfig
from shared.datasets.intake import layout_options
from shared.datasets.layout import scan_dataset_dir
from shared.datasets.report import read_caption_text
from worker.captioning.runner import caption_dataset


def caption_folder(
    dataset_dir: Path,
    config: TrainingConfig,
    captioning: CaptionConfig,
    *,
    models_dir: Path,
    allow_download: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, str]:
    """Image path -> the caption written (only the images captioned, as `captioning.existing` says)."""
    layout = scan_dataset_dir(dataset_dir, **layout_options(config))
    existing = {
        image.path: read_caption_text((dataset_dir / image.caption_path).read_bytes())
        if image.caption_path
        else None
        for subset in layout.subsets
        for image in subset.images
    }
    captions = caption_dataset(
        layout,
        dataset_dir,
        captioning,
        models_dir=models_dir,
        existing_captions=existing,
        on_progress=on_progress,
        should_cancel=should_cancel,
        allow_download=allow_download,
    )
    for path, caption in captions.items():
        image = dataset_dir / path
        image.with_suffix(".caption").unlink(missing_ok=True)  # the new .txt must be the one read
        if caption:
            image.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return captions
