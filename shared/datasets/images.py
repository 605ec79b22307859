"""Image checks and the one conversion the trainer needs, with Pillow only.

Pillow's global settings (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are left alone: the API and the
worker share the process-wide defaults, so limits are enforced here, per call.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image, ImageOps

from shared.datasets.pixels import to_8bit
from shared.errors import DatasetError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
TRAINABLE_FORMATS = ("PNG", "JPEG")  # the guide: "JPG and PNG train as they are"
MIN_SIDE = 8
_ACCEPTED = "png, jpg/jpeg, webp"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # Pillow's name: "PNG", "JPEG" or "WEBP"
    orientation: int = 1  # EXIF orientation; 5..8 turn the image a quarter, so it trains as height x width

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) as trained: after the EXIF orientation is applied (as the worker loads it)."""
        return _upright((self.width, self.height), self.orientation)


def probe_image(fp: BinaryIO | Path, name: str, max_pixels: int) -> ImageInfo:
    """Check one image: an accepted type, within `max_pixels` (judged from the header, before decoding),
    at least MIN_SIDE px a side, and fully decodable. Errors name the image as `entry=name`."""
    with _open(fp, name) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise _too_large(name, f"{width}x{height} = {width * height} pixels", max_pixels)
        if min(width, height) < MIN_SIDE:
            raise DatasetError(
                f"{name!r} is {width}x{height}; images need at least {MIN_SIDE} pixels on each side.",
                code="image_too_small",
                entry=name,
            )
        _decode(img, name)
        return ImageInfo(width=width, height=height, format=_format(img), orientation=_orientation(img))


def mask_resizes(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether a mask of `mask_size` (upright) can stand for an image of `image_size`: False when equal,
    True when it has the image's aspect ratio (to a pixel of rounding), so it is resized to the image;
    a DatasetError-worthy mismatch otherwise (see check_mask_size)."""
    (mw, mh), (iw, ih) = mask_size, image_size
    if (mw, mh) == (iw, ih):
        return False
    # Scaled to the larger of the two widths, the heights may differ by one pixel of rounding.
    return abs(mh * iw - ih * mw) <= max(iw, mw)


def check_mask_size(name: str, mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """mask_resizes, or a DatasetError (code mask_size_mismatch) naming the mask when the shapes differ.
    sd-scripts asserts equal sizes; a mask of the same aspect ratio (e.g. saved at half size) is resized
    to the image here instead, since it still says which pixels count."""
    resizes = mask_resizes(mask_size, image_size)
    if not resizes and tuple(mask_size) != tuple(image_size):
        raise DatasetError(
            f"mask {name!r} is {mask_size[0]}x{mask_size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; a mask needs the image's size (or its aspect ratio, then it "
            "is resized).",
            code="mask_size_mismatch",
            entry=name,
        )
    return resizes


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as trained, EXIF orientation applied; reads the orientation the way
    ImageOps.exif_transpose does (after loading, so a PNG eXIf chunk behind the pixels counts too)."""
    with _open(path, path.name) as img:
        size = img.size
        _decode(img, path.name)
        return _upright(size, _orientation(img))


def convert_to_trainable(path: Path, *, entry: str | None = None) -> Path:
    """Return a file the trainer reads as it is: PNG/JPEG untouched, anything else (WEBP) rewritten as
    `stem.png` beside it with EXIF orientation applied and alpha kept, the original removed.

    Only the image moves: a `stem.txt` caption keeps matching by stem. `entry` names the image in errors
    (defaults to the file name, so no server path leaks into a message).
    """
    name = entry or path.name
    with _open(path, name) as img:
        if _format(img) in TRAINABLE_FORMATS:
            return path
        target = path.with_suffix(".png")
        if target != path and (target.exists() or target.is_symlink()):
            raise DatasetError(
                f"{name!r} would become {target.name!r}, which already exists; keep only one of them.",
                code="duplicate_entry",
                entry=name,
            )
        _decode(img, name)
        image = _for_png(ImageOps.exif_transpose(img))
        tmp = target.with_name(f".{target.name}.tmp")  # hidden, so a crash leaves nothing the layout reads
        try:
            image.save(tmp, format="PNG", icc_profile=img.info.get("icc_profile"))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    if target != path:
        path.unlink()
    return target


def _open(fp: BinaryIO | Path, name: str) -> Image.Image:
    """Open with only the accepted decoders: others never parse untrusted bytes."""
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own global pixel limit; ours is checked by the caller.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _too_large(name, "over Pillow's hard pixel ceiling", None) from exc
    except Exception as exc:  # Pillow raises many types for bad headers (OSError, SyntaxError, struct.error)
        kind = _sniff_unsupported(fp)
        if kind:
            raise DatasetError(
                f"{name!r} is a {kind} image; accepted types are {_ACCEPTED}.",
                code="unsupported_image_type",
                entry=name,
            ) from exc
        raise _corrupt(name, exc) from exc


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a damaged EXIF block: exif_transpose would not turn the image either
        return 1
    return value if 1 <= value <= 8 else 1


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _format(img: Image.Image) -> str:
    # Phone JPEGs carrying a depth map or preview open as MPO; they are ordinary JPEGs to a trainer.
    return "JPEG" if img.format == "MPO" else str(img.format)


def _decode(img: Image.Image, name: str) -> None:
    """Decode every pixel: a truncated or damaged file must fail here, not mid-training."""
    if _format(img) == "JPEG":
        # DCT scaling decodes the whole entropy-coded stream at 1/8 the memory of a full load.
        img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
    try:
        img.load()
    except Exception as exc:
        raise _corrupt(name, exc) from exc


def _for_png(img: Image.Image) -> Image.Image:
    if img.mode in _PNG_MODES:
        return img
    return to_8bit(img)  # alpha kept; the shared conversion, so a WEBP's pixels are those the trainer reads


# Magic numbers of image types people upload but the trainer does not take.
_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}


def _sniff_unsupported(fp: BinaryIO | Path) -> str | None:
    try:
        if isinstance(fp, Path):
            with fp.open("rb") as f:
                head = f.read(16)
        else:
            fp.seek(0)
            head = fp.read(16)
            fp.seek(0)
    except (OSError, ValueError):
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12])
    return None


def _too_large(name: str, size: str, max_pixels: int | None) -> DatasetError:
    limit = f"the limit is {max_pixels} pixels" if max_pixels else "it is too large to open safely"
    return DatasetError(
        f"{name!r} is too large ({size}); {limit}.", code="image_too_large", entry=name, status_code=413
    )


# Pillow names the buffer it read from (`cannot identify image file <_io.BytesIO object at 0x7f...>`):
# noise to the user, and a memory address of the server.
_BUFFER_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def _corrupt(name: str, exc: Exception) -> DatasetError:
    reason = _BUFFER_REPR.sub("", str(exc)).strip() or type(exc).__name__
    return DatasetError(f"{name!r} could not be decoded ({reason}).", code="corrupt_image", entry=name)
