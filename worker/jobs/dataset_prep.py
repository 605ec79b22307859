"""From a stored dataset zip to a folder the engine trains on: safe extraction, a stored dataset's caption
snapshot applied, WEBP (and other non-PNG/JPEG) images converted to PNG beside their captions, and loss
masks (NAME_mask.png) the intake report rejected removed, so their images train unmasked as it said."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shared.datasets.images import check_mask_size, convert_to_trainable, probe_image, upright_size
from shared.datasets.layout import CAPTION_EXTENSIONS, REJECTED_IMAGE_EXTENSIONS, scan_dataset_dir
from shared.datasets.zipsafe import ZipLimits, extract_zip
from shared.errors import DatasetError

TRAINS_AS_IS = (".png", ".jpg", ".jpeg")


def apply_captions(root: Path, captions: Mapping[str, str | None]) -> None:
    """Makes the folder hold exactly the snapshot's images with the snapshot's captions: images the dataset
    rejected are removed, a caption becomes `stem.txt`, and None leaves the folder's `trigger class`."""
    for path in root.rglob("*"):  # types the dataset listed as rejected (a .gif) would refuse the scan
        if path.is_file() and not path.is_symlink() and path.suffix.lower() in REJECTED_IMAGE_EXTENSIONS:
            path.unlink()
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
    drop_bad_masks(dest, limits)
    if convert:
        for subset in scan_dataset_dir(dest).subsets:
            for image in subset.images:
                if not image.path.lower().endswith(TRAINS_AS_IS):
                    convert_to_trainable(dest / image.path, entry=image.path)
    return dest


def drop_bad_masks(root: Path, limits: ZipLimits) -> None:
    """Removes masks that do not decode or do not fit their image (shared.datasets.report rejects the same
    ones); a mask is never converted: the engine reads any accepted type as it is."""
    for subset in scan_dataset_dir(root).train_subsets:
        for image in subset.images:
            if image.mask_path is None:
                continue
            mask = root / image.mask_path
            try:
                with mask.open("rb") as stream:
                    info = probe_image(stream, image.mask_path, limits.max_image_pixels)
                check_mask_size(image.mask_path, info.upright_size, upright_size(root / image.path))
            except DatasetError:
                mask.unlink()
