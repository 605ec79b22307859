"""WD14 tagger (SmilingWolf's v2/v3 ONNX taggers): booru-style tags with Kohya's options.

Kohya's reference: sd-scripts ``finetune/tag_images_by_wd14_tagger.py`` (ONNX path). Same preprocessing
(transparent pixels on white, pad to a white square, resize to the model's input size, BGR, float32 0..255,
NHWC), the same tag rules (general and character thresholds, the rating as the arg-max of the rating tags,
underscores replaced except in short kaomoji, undesired tags dropped), with these differences:

- the input size is read from the ONNX input shape (Kohya hard-codes 448, which all WD14 v2/v3 taggers use);
- categories come from each row's ``category`` column (Kohya assumes 4 ratings first, then general, then
  character rows, which is how the real CSVs are ordered anyway);
- ``always_first_tags`` keep the order they were given in (Kohya's loop leaves the last one first);
- ``trigger_first`` (ours) puts the trigger word before everything, whether or not the tagger found it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.config.captioning import CaptionConfig
from shared.datasets.pixels import to_8bit
from worker.captioning import CaptionModelUnavailable, resolve_caption_model

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_INPUT_SIZE = 448  # every WD14 v2/v3 tagger; used only when the ONNX input shape leaves it open
CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9
# Kohya replaces underscores only in tags longer than 3 characters, which keeps kaomoji like ^_^, o_o, >_<.
# Longer kaomoji tags (from the tag list SmilingWolf's tagger demo keeps as they are) are kept too.
KAOMOJI = frozenset({"(o)_(o)", "<o>_<o>", "<|>_<|>", "||_||"})


def display_name(tag: str, replace_underscores: bool) -> str:
    """How a tag is written in a caption: ``long_hair`` -> ``long hair``; kaomoji stay as they are."""
    if replace_underscores and len(tag) > 3 and tag not in KAOMOJI:
        return tag.replace("_", " ")
    return tag


def tag_key(tag: str) -> str:
    """Compare tags whatever their underscores/spaces/case: ``Long_Hair`` == ``long hair``."""
    return " ".join(tag.replace("_", " ").split()).lower()


@dataclass(frozen=True)
class Wd14Tag:
    name: str  # as in selected_tags.csv, e.g. "long_hair"
    category: int


def read_tags(path: Path) -> list[Wd14Tag]:
    """selected_tags.csv rows (header tag_id,name,category[,count]) in file order: the model's outputs."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["tag_id", "name", "category"]:
            raise ValueError(f"{path.name}: expected the header tag_id,name,category,count, got {header}")
        tags = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                tags.append(Wd14Tag(name=row[1], category=int(row[2])))
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{path.name} line {line}: bad row {row!r}") from exc
    return tags


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels are composited over white (Kohya's tagger and BLIP's processor do the same).
    Through the shared 8-bit conversion, so a 16-bit or CMYK image is tagged as it trains."""
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """One image as the tagger reads it: HxWx3 float32 BGR 0..255, padded to a white square, resized."""
    image = flatten_on_white(image)
    side = max(image.size)
    if image.size != (side, side):
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    if side != size:
        # Kohya: area averaging when shrinking, Lanczos when enlarging (library.utils.resize_image).
        image = image.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32)[:, :, ::-1].copy()


class Wd14Tagger:
    """An ONNX WD14 tagger and its tag list."""

    def __init__(self, model_dir: Path, ref: str | None = None) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.ref = ref or str(model_dir)
        try:
            self.tags = read_tags(self.model_dir / TAGS_FILE)
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
            self.session = ort.InferenceSession(str(self.model_dir / MODEL_FILE), providers=providers)
        except Exception as exc:
            raise CaptionModelUnavailable(
                "WD14", self.ref, f"failed to load {self.model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = list(model_input.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise CaptionModelUnavailable(
                "WD14", self.ref, f"{MODEL_FILE} takes input {shape}; expected NHWC images [N, H, W, 3]"
            )
        self.input_size = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else DEFAULT_INPUT_SIZE
        # Some exported taggers have a fixed batch size: then that is the batch (as Kohya does).
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = list(self.session.get_outputs()[0].shape)
        if outputs and isinstance(outputs[-1], int) and outputs[-1] != len(self.tags):
            raise CaptionModelUnavailable(
                "WD14",
                self.ref,
                f"{MODEL_FILE} outputs {outputs[-1]} labels but {TAGS_FILE} lists {len(self.tags)}",
            )

    @classmethod
    def load(
        cls,
        ref: str,
        models_dir: Path,
        *,
        allow_download: bool = False,
        cache_dir: Path | None = None,
    ) -> Wd14Tagger:
        folder = resolve_caption_model(
            "WD14",
            ref,
            models_dir,
            required_files=(MODEL_FILE, TAGS_FILE),
            download_patterns=(MODEL_FILE, TAGS_FILE),
            allow_download=allow_download,
            cache_dir=cache_dir,
        )
        return cls(folder, ref)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[len(images), number of tags] confidences, in selected_tags.csv order."""
        if not images:
            return np.zeros((0, len(self.tags)), dtype=np.float32)
        batch = np.stack([preprocess(image, self.input_size) for image in images])
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: batch})[0]
        parts = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start : start + self.fixed_batch]
            padded = np.concatenate(
                [chunk, np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]), chunk.dtype)]
            )
            parts.append(self.session.run(None, {self.input_name: padded})[0][: len(chunk)])
        return np.concatenate(parts)

    def select_tags(self, probs: np.ndarray, config: CaptionConfig) -> list[str]:
        """The tags one image's confidences give under ``config``, in caption order (no prefix/postfix)."""
        undesired = {tag_key(t) for t in config.undesired_tags}
        found: list[str] = []
        best_rating: tuple[float, str] | None = None
        for tag, p in zip(self.tags, probs, strict=True):
            if tag.category == CATEGORY_RATING:
                if best_rating is None or p > best_rating[0]:
                    best_rating = (float(p), tag.name)
                continue
            if tag.category == CATEGORY_GENERAL:
                threshold = config.general_threshold
            elif tag.category == CATEGORY_CHARACTER:
                threshold = config.character_threshold
            else:
                continue  # other categories (none in WD14 v2/v3 lists) are not written, as in Kohya
            if p >= threshold and tag_key(tag.name) not in undesired:
                found.append(display_name(tag.name, config.replace_underscores))
        # Kohya's --use_rating_tags: the most likely rating goes first, unless it is an undesired tag.
        if (
            config.include_rating_tags
            and best_rating is not None
            and tag_key(best_rating[1]) not in undesired
        ):
            found.insert(0, display_name(best_rating[1], config.replace_underscores))
        return order_tags(found, config)

    def tag_images(self, images: Sequence[Image.Image], config: CaptionConfig) -> list[list[str]]:
        return [self.select_tags(row, config) for row in self.probabilities(images)]

    def release(self) -> None:
        self.session = None


def order_tags(tags: Sequence[str], config: CaptionConfig) -> list[str]:
    """Trigger word first, then the always-first tags that were found (in the given order), then the rest."""
    firsts = [tag_key(t) for t in config.always_first_tags]
    present = {tag_key(t): t for t in tags}
    head = [present[k] for k in dict.fromkeys(firsts) if k in present]
    rest = [t for t in tags if tag_key(t) not in set(firsts)]
    ordered = head + rest
    if config.trigger_first:
        trigger = config.trigger_first
        ordered = [trigger] + [t for t in ordered if tag_key(t) != tag_key(trigger)]
    return ordered
