"""From a stored dataset zip to a folder the engine trains on: safe extraction, a stored dataset's caption
snapshot applied, WEBP (and other non-PNG/JPEG) images converted to PNG beside their captions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shared.datasets.images import convert_to_trainable
from shared.datasets.layout import CAPTION_EXTENSIONS, scan_dataset_dir
from shared.datasets.zipsafe import ZipLimits, extract_zip

TRAINS_AS_IS = (".png", ".jpg", ".jpeg")


def apply_captions(root: Path, captions: Mapping[str, str | None]) -> None:
    """Makes the folder hold exactly the snapshot's images with the snapshot's captions: images the dataset
    rejected are removed, a caption becomes `stem.txt`, and None leaves the folder's `trigger class`."""
    for subset in scan_dataset_dir(root).subsets:
        for image in subset.images:
            path = root / image.path
            for ext in CAPTION_EXTENSIONS:
                path.with_suffix(ext).unlink(missing_ok=True)
            if image.path not in captions:
                path.unlink()
            elif captions[image.path] is not None:
                path.with_suffix(".txt").write_text(captions[image.path] or "", encoding="utf-8")


def prepare_dataset_dir(
    archive: Path,
    dest: Path,
    limits: ZipLimits,
    *,
    captions: Mapping[str, str | None] | None = None,
    convert: bool = True,
) -> Path:
    extract_zip(archive, dest, limits)
    if captions is not None:
        apply_captions(dest, captions)
    if convert:
        for subset in scan_dataset_dir(dest).subsets:
            for image in subset.images:
                if not image.path.lower().endswith(TRAINS_AS_IS):
                    convert_to_trainable(dest / image.path, entry=image.path)
    return dest
