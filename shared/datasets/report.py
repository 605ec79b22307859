"""What a stored dataset holds and what a Kohya user should know about it.

Reads an uploaded zip once (after zipsafe and the layout rules have passed): each image is accepted,
converted (how), or rejected (why: unsupported, too small/large, duplicate content), its caption is read,
a thumbnail made, and the warnings a Kohya user would want are listed. An image that does not decode
refuses the whole zip, as on the job upload, with every other problem the zip has.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from shared.datasets.images import check_mask_size, probe_image
from shared.datasets.layout import (
    REJECTED_IMAGE_EXTENSIONS,
    DatasetLayout,
    ImageEntry,
    Subset,
    is_junk,
    is_mask_name,
    read_layout,
)
from shared.datasets.pixels import has_transparency, reduced_bit_depth, to_rgb
from shared.datasets.problems import UNSAFE_TO_READ, Problems
from shared.datasets.zipsafe import ZipLimits, read_member, scan_zip
from shared.errors import DatasetError

THUMBNAIL_SIDE = 256
FEW_IMAGES = 10  # the guide: "as few as 10 images"
SMALL_SIDE = 512  # SD1.5's training resolution; images far below it train blurry
# A training image that does not decode refuses the zip on this route as on the job upload (docs/datasets.md):
# it is damage to fix, not a choice to review. Other rejections (type, size, duplicate) are per file here.
REFUSED_IMAGE_CODES = frozenset({"corrupt_image", "corrupt_entry"})


@dataclass
class FileOutcome:
    path: str
    status: str  # accepted, converted, rejected; "mask" for a NAME_mask.png loss mask (never an image)
    reason: str | None = None  # error code when rejected; for a mask that is not used, why
    detail: str | None = None
    conversions: list[str] = field(default_factory=list)


@dataclass
class AnalyzedImage:
    path: str
    subset: str
    is_reg: bool
    width: int
    height: int
    format: str
    content_sha256: str
    caption: str | None
    thumbnail: bytes


@dataclass
class DatasetAnalysis:
    layout: DatasetLayout  # accepted images only
    images: list[AnalyzedImage]
    files: list[FileOutcome]
    warnings: list[dict[str, Any]]

    def report(self) -> dict[str, Any]:
        return {"files": [asdict(f) for f in self.files], "warnings": self.warnings}


def read_caption_text(data: bytes) -> str:
    """Kohya reads the first line of a caption file."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    return text.splitlines()[0].strip() if text.strip() else ""


def conversions_needed(img: Image.Image) -> list[str]:
    """What training will change about this image, so the user is told up front."""
    notes = []
    if img.format == "WEBP":
        notes.append("webp converted to png")
    if img.mode == "CMYK":
        notes.append("cmyk converted to rgb")
    depth = reduced_bit_depth(img)  # before getexif below, which may load the pixels (and drop the tiles)
    if depth:
        notes.append(f"{depth} reduced to 8-bit")
    if has_transparency(img):
        notes.append("transparency flattened")
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        notes.append("rotated by its EXIF orientation")
    return notes


def make_thumbnail(img: Image.Image) -> bytes:
    thumb = to_rgb(ImageOps.exif_transpose(img))  # the trainer's pixels (worker.training.data.load_image)
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _analyze_image(
    archive: zipfile.ZipFile, entry: ImageEntry, subset: Subset, limits: ZipLimits, seen: dict[str, str]
) -> tuple[FileOutcome, AnalyzedImage | None]:
    """The image's outcome; a damaged one raises (REFUSED_IMAGE_CODES), as the job upload refuses it."""
    data = read_member(archive, entry.path)
    try:
        info = probe_image(io.BytesIO(data), entry.path, limits.max_image_pixels)
    except DatasetError as exc:
        if exc.code in REFUSED_IMAGE_CODES:
            raise
        return FileOutcome(entry.path, "rejected", exc.code, exc.message), None
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        return FileOutcome(
            entry.path, "rejected", "duplicate_image", f"same content as {seen[digest]!r}"
        ), None
    seen[digest] = entry.path
    with Image.open(io.BytesIO(data)) as img:
        notes = conversions_needed(img)
        thumbnail = make_thumbnail(img)
    caption = read_caption_text(read_member(archive, entry.caption_path)) if entry.caption_path else None
    outcome = FileOutcome(entry.path, "converted" if notes else "accepted", conversions=notes)
    image = AnalyzedImage(
        entry.path,
        subset.folder,
        subset.is_reg,
        *info.upright_size,  # as trained (EXIF orientation applied): what the job plan buckets by
        info.format,
        digest,
        caption or None,
        thumbnail,
    )
    return outcome, image


def _analyze_mask(
    archive: zipfile.ZipFile, entry: ImageEntry, image: AnalyzedImage, limits: ZipLimits
) -> FileOutcome:
    """A training image's mask: readable and of the image's size (or aspect ratio: then resized)."""
    assert entry.mask_path is not None
    name = entry.mask_path
    try:
        info = probe_image(io.BytesIO(read_member(archive, name)), name, limits.max_image_pixels)
        resizes = check_mask_size(name, info.upright_size, (image.width, image.height))
    except DatasetError as exc:
        return FileOutcome(name, "rejected", exc.code, exc.message)
    notes = [f"resized to its image's {image.width}x{image.height}"] if resizes else []
    return FileOutcome(name, "mask", detail=f"loss mask of {entry.path!r}", conversions=notes)


def _unused_mask_outcomes(layout: DatasetLayout) -> list[FileOutcome]:
    orphans = [
        FileOutcome(m, "mask", "mask_without_image", "no image of the same name beside it; not used")
        for m in layout.orphan_masks
    ]
    reg = [
        FileOutcome(m, "mask", "reg_mask_unused", "regularization images are not masked (as in sd-scripts)")
        for m in layout.reg_masks
    ]
    return orphans + reg


def analyze_dataset_zip(
    path: Path,
    limits: ZipLimits,
    *,
    default_repeats: int = 1,
    trigger: str | None = None,
    class_token: str | None = None,
) -> DatasetAnalysis:
    problems = Problems()
    members = scan_zip(path, limits, problems)
    if problems.has(*UNSAFE_TO_READ):
        problems.raise_any()
    # Unsupported image types are reported per file here, where the one-shot job upload refuses the zip.
    files: list[FileOutcome] = [
        FileOutcome(m, "rejected", "unsupported_image_type", "accepted types: png, jpg/jpeg, webp")
        for m in members
        if not is_junk(m) and Path(m).suffix.lower() in REJECTED_IMAGE_EXTENSIONS
    ]
    rejected_names = {f.path for f in files}
    layout = read_layout(
        [m for m in members if m not in rejected_names],
        problems,
        default_repeats=default_repeats,
        trigger=trigger,
        class_token=class_token,
    )
    if layout is None:
        problems.raise_any()
    assert layout is not None
    images: list[AnalyzedImage] = []
    kept_subsets: list[Subset] = []
    seen: dict[str, str] = {}
    with zipfile.ZipFile(path) as archive:
        for subset in layout.subsets:
            kept: list[ImageEntry] = []
            for entry in subset.images:
                try:
                    outcome, image = _analyze_image(archive, entry, subset, limits, seen)
                except DatasetError as exc:  # refuses the zip: looking on for more of them
                    problems.add(exc)
                    continue
                files.append(outcome)
                if image is None and entry.mask_path is not None:
                    files.append(
                        FileOutcome(entry.mask_path, "mask", "image_rejected", "its image was rejected")
                    )
                if image is not None:
                    if entry.mask_path is not None:
                        files.append(mask := _analyze_mask(archive, entry, image, limits))
                        if mask.status == "rejected":  # the image trains unmasked
                            entry = ImageEntry(entry.path, entry.caption_path)
                    images.append(image)
                    kept.append(entry)
            if kept:
                kept_subsets.append(
                    Subset(
                        subset.folder,
                        subset.repeats,
                        subset.trigger,
                        subset.class_token,
                        subset.is_reg,
                        tuple(kept),
                    )
                )
    problems.raise_any()
    files.extend(_unused_mask_outcomes(layout))
    accepted = DatasetLayout(layout.kind, tuple(kept_subsets), layout.orphan_masks, layout.reg_masks)
    if not accepted.train_subsets:
        rejected = next((f for f in files if f.status == "rejected"), None)
        raise DatasetError(
            "no usable training images"
            + (f": every image was rejected, e.g. {rejected.path!r} ({rejected.detail})" if rejected else ""),
            code="no_images",
            details={"files": [asdict(f) for f in files]},
        )
    return DatasetAnalysis(accepted, images, files, dataset_warnings(accepted, images, files))


def dataset_warnings(
    layout: DatasetLayout, images: list[AnalyzedImage], files: list[FileOutcome]
) -> list[dict[str, Any]]:
    warnings: list[dict[str, Any]] = []
    train = [i for i in images if not i.is_reg]
    if len(train) < FEW_IMAGES:
        warnings.append(
            {
                "code": "few_images",
                "message": f"{len(train)} training images; the guide "
                f"recommends 30-150 and at least {FEW_IMAGES}",
            }
        )
    uncaptioned = [i.path for i in train if i.caption is None]
    if uncaptioned:
        warnings.append(
            {
                "code": "captions_missing",
                "count": len(uncaptioned),
                "examples": uncaptioned[:5],
                "message": f"{len(uncaptioned)} training images have no caption file; they train on "
                "their folder's `trigger class` (caption them with BLIP or WD14)",
            }
        )
    small = [i for i in train if min(i.width, i.height) < SMALL_SIDE // 2]
    if small:
        warnings.append(
            {
                "code": "small_images",
                "count": len(small),
                "examples": [i.path for i in small[:5]],
                "message": f"{len(small)} images are under {SMALL_SIDE // 2}px on their short side, "
                f"far below a {SMALL_SIDE}px training resolution",
            }
        )
    train_classes = {s.class_token for s in layout.train_subsets if s.class_token}
    for subset in layout.reg_subsets:
        reg_class = subset.class_token or subset.trigger
        if train_classes and reg_class not in train_classes:
            warnings.append(
                {
                    "code": "reg_class_mismatch",
                    "folder": subset.folder,
                    "message": f"regularization folder {subset.folder!r} has class {reg_class!r}, but "
                    f"the training folders use {sorted(train_classes)}",
                }
            )
    warnings.extend(_mask_warnings(files))
    rejected = [
        f.path
        for f in files
        if f.status == "rejected" and f.reason != "duplicate_image" and not is_mask_name(f.path)
    ]
    if rejected:
        warnings.append(
            {
                "code": "images_rejected",
                "count": len(rejected),
                "examples": rejected[:5],
                "message": f"{len(rejected)} images were rejected and are not trained on (see files for why)",
            }
        )
    duplicates = [f.path for f in files if f.reason == "duplicate_image"]
    if duplicates:
        warnings.append(
            {
                "code": "duplicates_removed",
                "count": len(duplicates),
                "examples": duplicates[:5],
                "message": f"{len(duplicates)} images repeat another image's content and were left out",
            }
        )
    return warnings


_MASK_WARNINGS = {
    "mask_without_image": "{n} mask files (NAME_mask.png) have no image NAME beside them and are not used; "
    "if one is a training image, rename it",
    "reg_mask_unused": "{n} mask files are in regularization folders; regularization images train unmasked "
    "(as in sd-scripts)",
    "image_rejected": "{n} mask files belong to rejected images and are not used",
}


def _mask_warnings(files: list[FileOutcome]) -> list[dict[str, Any]]:
    """Mask files that will not weight any loss: bad ones (their image trains unmasked) and unused ones."""
    warnings: list[dict[str, Any]] = []
    bad = [f.path for f in files if f.status == "rejected" and is_mask_name(f.path)]
    if bad:
        warnings.append(
            {
                "code": "masks_rejected",
                "count": len(bad),
                "examples": bad[:5],
                "message": f"{len(bad)} mask files were rejected (see files); their images train unmasked",
            }
        )
    for code, message in _MASK_WARNINGS.items():
        paths = [f.path for f in files if f.status == "mask" and f.reason == code]
        if paths:
            warnings.append(
                {
                    "code": code,
                    "count": len(paths),
                    "examples": paths[:5],
                    "message": message.format(n=len(paths)),
                }
            )
    return warnings


def layout_to_json(layout: DatasetLayout) -> dict[str, Any]:
    return {
        "kind": layout.kind,
        "subsets": [
            {
                "folder": s.folder,
                "repeats": s.repeats,
                "trigger": s.trigger,
                "class_token": s.class_token,
                "is_reg": s.is_reg,
                "images": len(s.images),
            }
            for s in layout.subsets
        ],
    }


def layout_from_json(data: dict[str, Any], images_by_subset: dict[str, list[str]]) -> DatasetLayout:
    """Rebuilds a layout from its stored form and the (accepted) image paths of each subset."""
    subsets = tuple(
        Subset(
            s["folder"],
            s["repeats"],
            s["trigger"],
            s["class_token"],
            s["is_reg"],
            tuple(ImageEntry(p, None) for p in sorted(images_by_subset.get(s["folder"], []))),
        )
        for s in data["subsets"]
    )
    return DatasetLayout(data["kind"], tuple(s for s in subsets if s.images))
