"""From a stored dataset zip to a folder the engine trains on: safe extraction, WEBP (and other
non-PNG/JPEG) images converted to PNG beside their captions."""

from __future__ import annotations

from pathlib import Path

from shared.dataset_layout import scan_dataset_dir
from shared.images import convert_to_trainable
from shared.zipsafe import ZipLimits, extract_zip

TRAINS_AS_IS = (".png", ".jpg", ".jpeg")


def prepare_dataset_dir(archive: Path, dest: Path, limits: ZipLimits) -> Path:
    extract_zip(archive, dest, limits)
    for subset in scan_dataset_dir(dest).subsets:
        for image in subset.images:
            if not image.path.lower().endswith(TRAINS_AS_IS):
                convert_to_trainable(dest / image.path, entry=image.path)
    return dest
