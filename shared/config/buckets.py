"""Kohya's aspect-ratio bucketing, pure (no torch, no numpy), so the API plans with the worker's rules.

Follows sd-scripts: `model_util.make_bucket_resolutions` for the bucket list, `BucketManager.select_bucket` /
`round_to_steps` for each image's bucket and resize, `trim_and_resize_if_required` for the crop (centered:
Kohya's default without `--random_crop`), and `BaseDataset.make_buckets` for the per-bucket batch count
(`ceil(samples_in_bucket / batch_size)`, repeats included). Without `enable_bucket` there is one bucket,
`resolution x resolution`, and every image is resized to cover it, as Kohya does when latents are cached.

Sizes are (width, height) of the image as trained: upright, after its EXIF orientation is applied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.errors import DatasetError

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class BucketSettings:
    resolution: int  # the side of the square training area (Kohya's --resolution N)
    enable_bucket: bool = True
    min_reso: int = 256
    max_reso: int = 1024
    steps: int = 64
    no_upscale: bool = False

    @classmethod
    def from_config(cls, config: object) -> BucketSettings:
        """From a TrainingConfig (duck-typed, so this module does not depend on the spec)."""
        return cls(
            resolution=config.resolution,  # type: ignore[attr-defined]
            enable_bucket=config.enable_bucket,  # type: ignore[attr-defined]
            min_reso=config.min_bucket_reso,  # type: ignore[attr-defined]
            max_reso=config.max_bucket_reso,  # type: ignore[attr-defined]
            steps=config.bucket_reso_steps,  # type: ignore[attr-defined]
            no_upscale=config.bucket_no_upscale,  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class Assignment:
    """Where one image trains: its bucket, the size it is resized to first (covering the bucket), and
    the centered crop from that size down to the bucket."""

    bucket: Size
    resized: Size
    ar_error: float  # bucket aspect ratio minus image aspect ratio, as Kohya logs it

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in the resized image: Kohya trims `excess // 2` from the left/top."""
        left = (self.resized[0] - self.bucket[0]) // 2
        top = (self.resized[1] - self.bucket[1]) // 2
        return left, top, left + self.bucket[0], top + self.bucket[1]


@dataclass(frozen=True)
class BucketRow:
    width: int
    height: int
    images: int  # distinct images in the bucket
    samples: int  # images seen per epoch from it: repeats and regularization matching applied
    batches: int  # ceil(samples / batch_size)


def make_bucket_resolutions(resolution: int, min_reso: int, max_reso: int, steps: int) -> list[Size]:
    """Kohya's predefined buckets for a `resolution`^2 area: the square rounded down to `steps`, plus for
    every width min..max (in steps) the tallest height in steps that keeps the area (capped at max),
    both orientations. Sorted by (width, height)."""
    area = resolution * resolution
    side = int(math.sqrt(area) // steps) * steps
    resos: set[Size] = {(side, side)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, int((area // width) // steps) * steps)
        if height >= min_reso:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


class BucketSelector:
    """`BucketManager.select_bucket` for one settings; holds the predefined list (when upscaling)."""

    def __init__(self, settings: BucketSettings):
        self.settings = settings
        if not settings.enable_bucket:
            self.predefined: list[Size] = [(settings.resolution, settings.resolution)]
        elif settings.no_upscale:
            self.predefined = []  # the bucket follows the image size; min/max are ignored, as in Kohya
        else:
            self.predefined = make_bucket_resolutions(
                settings.resolution, settings.min_reso, settings.max_reso, settings.steps
            )
        self._predefined_set = set(self.predefined)
        self._ratios = [w / h for w, h in self.predefined]

    @property
    def upscales(self) -> bool:
        return not (self.settings.enable_bucket and self.settings.no_upscale)

    def select(self, size: Size, name: str = "image") -> Assignment:
        width, height = size
        if width <= 0 or height <= 0:
            raise ValueError(f"{name!r}: invalid image size {size}")
        aspect = width / height
        if self.upscales:
            reso = (width, height)
            if reso not in self._predefined_set:
                # np.argmin over |ratio error|: the first (smallest (w, h)) bucket wins a tie.
                errors = [abs(r - aspect) for r in self._ratios]
                reso = self.predefined[errors.index(min(errors))]
            # Wider than the bucket: match heights; otherwise widths.
            scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            resized = self._no_upscale_size(width, height, aspect)
            steps = self.settings.steps
            reso = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
            if reso[0] == 0 or reso[1] == 0:
                raise DatasetError(
                    f"{name!r} is {width}x{height}: with bucket_no_upscale each side needs at least "
                    f"bucket_reso_steps ({steps}) pixels; enlarge/remove it or turn bucket_no_upscale off.",
                    code="image_too_small",
                    entry=name,
                )
        return Assignment(bucket=reso, resized=resized, ar_error=reso[0] / reso[1] - aspect)

    def _no_upscale_size(self, width: int, height: int, aspect: float) -> Size:
        area = self.settings.resolution * self.settings.resolution
        if width * height <= area:
            return width, height  # no resize: the bucket is the image, rounded down to steps, cropped
        # Too large: shrink to the area keeping the aspect ratio; round the side whose rounding keeps the
        # aspect ratio closer (Kohya's comparison, strict: a tie rounds the height).
        resized_width = math.sqrt(area * aspect)
        resized_height = area / resized_width
        w_rounded = self._round(resized_width)
        h_in_w = self._round(w_rounded / aspect)
        h_rounded = self._round(resized_height)
        w_in_h = self._round(h_rounded * aspect)
        ar_w = w_rounded / h_in_w if h_in_w else math.inf
        ar_h = w_in_h / h_rounded if h_rounded else math.inf
        if abs(ar_w - aspect) < abs(ar_h - aspect):
            return w_rounded, int(w_rounded / aspect + 0.5)
        return int(h_rounded * aspect + 0.5), h_rounded

    def _round(self, x: float) -> int:
        """Kohya's round_to_steps: round half up, then down to a multiple of steps."""
        value = int(x + 0.5)
        return value - value % self.settings.steps


def assign_buckets(sizes: Mapping[str, Size], settings: BucketSettings) -> dict[str, Assignment]:
    """Each image's bucket, by its relative path."""
    selector = BucketSelector(settings)
    return {path: selector.select(tuple(size), path) for path, size in sizes.items()}  # type: ignore[arg-type]


def bucket_table(
    assignments: Mapping[str, Assignment], samples: Iterable[tuple[str, int]], batch_size: int
) -> list[BucketRow]:
    """Kohya's bucket report: per bucket (sorted by resolution, empty ones left out) the distinct images,
    the samples per epoch (`samples` gives (path, times seen per epoch); a path may come more than once)
    and the batches they make."""
    images: dict[Size, set[str]] = {}
    counts: dict[Size, int] = {}
    for path, times in samples:
        if times <= 0:
            continue
        bucket = assignments[path].bucket
        images.setdefault(bucket, set()).add(path)
        counts[bucket] = counts.get(bucket, 0) + times
    return [
        BucketRow(
            width=w,
            height=h,
            images=len(images[(w, h)]),
            samples=counts[(w, h)],
            batches=math.ceil(counts[(w, h)] / batch_size),
        )
        for w, h in sorted(counts)
    ]


def sdxl_crop_ltrb(bucket: Size, image_size: Size) -> tuple[float, float, float, float]:
    """Kohya's BucketManager.get_crop_ltrb, as SDXL's crop conditioning reads it: where the image sits in
    the bucket when fitted inside it (Stability AI's preprocessing), not the pixels actually cropped."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        resized_width, resized_height = bucket[1] * image_ar, float(bucket[1])
    else:
        resized_width, resized_height = float(bucket[0]), bucket[0] / image_ar
    left = (bucket[0] - resized_width) // 2
    top = (bucket[1] - resized_height) // 2
    return left, top, left + resized_width, top + resized_height


def sdxl_size_conditioning(
    image_size: Size, bucket: Size, *, flipped: bool = False
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(original (h, w), crop (top, left), target (h, w)) of one sample, as Kohya's dataset builds SDXL's
    time ids; a mirrored sample's crop left is measured from the other side."""
    left, top, right, _ = sdxl_crop_ltrb(bucket, image_size)
    if flipped:
        left = bucket[0] - right
    return (image_size[1], image_size[0]), (int(top), int(left)), (bucket[1], bucket[0])
