"""Checks an uploaded dataset zip completely before anything is stored: safe entries, a usable layout,
and images that decode, reporting every problem at once. Used by the API on upload; the worker re-checks
what it extracts."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from shared.config.spec import TrainingConfig
from shared.datasets.images import ImageInfo, check_mask_size, probe_image
from shared.datasets.layout import DatasetLayout, read_layout
from shared.datasets.problems import UNSAFE_TO_READ, Problems
from shared.datasets.zipsafe import ZipLimits, read_member, scan_zip
from shared.errors import DatasetError


@dataclass(frozen=True)
class DatasetReport:
    layout: DatasetLayout
    images: dict[str, ImageInfo]  # by path inside the zip
    masks: dict[str, ImageInfo] = field(default_factory=dict)  # loss masks (NAME_mask.png), by mask path

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """(width, height) as trained (EXIF orientation applied), by path: what compute_plan buckets by."""
        return {path: info.upright_size for path, info in self.images.items()}


def layout_options(config: TrainingConfig) -> dict:
    """How a config fills in what a flat layout leaves open (repeats, caption for uncaptioned images)."""
    return {
        "default_repeats": config.repeats,
        "trigger": config.trigger_word,
        "class_token": config.class_word,
        "caption_extension": config.caption_extension,
    }


def inspect_dataset_zip(path: Path, config: TrainingConfig, limits: ZipLimits) -> DatasetReport:
    """Every problem of the zip at once (entries, layout, each image and mask) as one DatasetError."""
    problems = Problems()
    members = scan_zip(path, limits, problems)
    if problems.has(*UNSAFE_TO_READ):
        problems.raise_any()
    layout = read_layout(members, problems, **layout_options(config))
    infos: dict[str, ImageInfo] = {}
    masks: dict[str, ImageInfo] = {}
    images = [image for subset in layout.subsets for image in subset.images] if layout else []
    with zipfile.ZipFile(path) as archive:
        for image in images:
            try:
                data = io.BytesIO(read_member(archive, image.path))
                infos[image.path] = probe_image(data, image.path, limits.max_image_pixels)
                if image.mask_path is not None:  # a bad mask refuses the zip, as a bad image does
                    data = io.BytesIO(read_member(archive, image.mask_path))
                    mask = probe_image(data, image.mask_path, limits.max_image_pixels)
                    check_mask_size(image.mask_path, mask.upright_size, infos[image.path].upright_size)
                    masks[image.mask_path] = mask
            except DatasetError as exc:
                problems.add(exc)
    problems.raise_any()
    assert layout is not None
    return DatasetReport(layout=layout, images=infos, masks=masks)
