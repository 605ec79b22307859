"""Caption a dataset's training images: choose the images, run the captioner in batches, merge the results.

Pure apart from model inference: nothing is written; the caller gets ``image path -> caption`` and writes the
caption files (``stem.txt`` beside each image, as Kohya's captioners do).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from shared.config.captioning import CaptionConfig
from shared.datasets.layout import DatasetLayout
from shared.errors import DatasetError, LorabakeError
from worker.captioning import CaptioningCanceled
from worker.captioning.trigger import Subject, folder_subjects, place_trigger, subject_for


def has_caption(text: str | None) -> bool:
    return text is not None and bool(text.strip())


def images_to_caption(
    layout: DatasetLayout, config: CaptionConfig, existing_captions: Mapping[str, str | None]
) -> list[str]:
    """Training images (not regularization images, which keep their class caption) the config captions.

    ``keep`` leaves out images that already have a non-empty caption; a path missing from
    ``existing_captions`` has none.
    """
    paths = dict.fromkeys(entry.path for subset in layout.train_subsets for entry in subset.images)
    if config.existing == "keep":
        return [p for p in paths if not has_caption(existing_captions.get(p))]
    return list(paths)


def _first_line(text: str) -> str:
    # The trainer reads a caption file's first line (as Kohya does); that is the caption to extend.
    lines = [line.strip() for line in text.strip().splitlines()]
    return lines[0] if lines else ""


def _split(text: str, separator: str) -> list[str]:
    return [part.strip() for part in text.split(separator.strip()) if part.strip()]


def _strip_affixes(text: str, config: CaptionConfig) -> str:
    """An existing caption without the prefix/postfix this config adds (so appending does not double them)."""
    sep = config.tag_separator.strip()
    prefix, postfix = config.prefix.strip(), config.postfix.strip()
    if prefix and text.startswith(prefix) and _word_ends(prefix, text[len(prefix) : len(prefix) + 1]):
        text = text[len(prefix) :].strip().removeprefix(sep).strip()
    if postfix and text.endswith(postfix) and _word_ends(text[-len(postfix) - 1 : -len(postfix)], postfix):
        text = text[: -len(postfix)].strip().removesuffix(sep).strip()
    return text


def _word_ends(left: str, right: str) -> bool:
    """True unless ``left + right`` glues two word characters: "lisa" is not a prefix of "lisabp"."""
    return not (left and right and left[-1].isalnum() and right[0].isalnum())


def add_affixes(body: str, config: CaptionConfig) -> str:
    """``prefix body postfix``, one space between the non-empty parts (Kohya's GUI joins with a space).

    The guide's prefix ``"lisabp, "`` gives ``"lisabp, a woman ..."``. With no body, a separator that ends
    the prefix is dropped (``"lisabp"``, not ``"lisabp,"``).
    """
    prefix, postfix = config.prefix.strip(), config.postfix.strip()
    if not body:
        prefix = prefix.removesuffix(config.tag_separator.strip()).strip()
    return " ".join(part for part in (prefix, body, postfix) if part)


def merge_blip(
    existing: str | None, sentence: str, config: CaptionConfig, subject: Subject | None = None
) -> str:
    """The caption an image gets from a new sentence (BLIP or a vision-language model); ``append`` adds it
    after the existing caption; the trigger word goes where ``trigger_placement`` says, inside the affixes."""
    sentence = sentence.strip()
    core = sentence
    if config.existing == "append" and has_caption(existing):
        core = _strip_affixes(_first_line(existing or ""), config)
        parts = _split(core, config.tag_separator)
        if sentence and sentence.lower() not in {p.lower() for p in parts}:
            core = config.tag_separator.join([core, sentence]) if core else sentence
    placed = place_trigger(core, subject_for(config, subject), config.trigger_placement, config.tag_separator)
    return add_affixes(placed, config)


def merge_tags(
    existing: str | None, tags: Sequence[str], config: CaptionConfig, subject: Subject | None = None
) -> str:
    """The caption an image gets from new WD14 tags; ``append`` adds the tags the caption lacks (Kohya's
    --append_tags), the trigger word (``trigger_first``) stays first. A tag list has no article to replace:
    ``trigger_placement`` puts the trigger first either way."""
    from worker.captioning.wd14 import order_tags, tag_key

    tags = list(tags)
    if config.existing == "append" and has_caption(existing):
        old = _split(_strip_affixes(_first_line(existing or ""), config), config.tag_separator)
        known = {tag_key(t) for t in old}
        tags = old + [t for t in tags if tag_key(t) not in known]
        if config.trigger_first:
            tags = order_tags(tags, config.model_copy(update={"always_first_tags": []}))
    trigger = subject_for(config, subject).trigger
    if config.trigger_placement != "none" and trigger and tag_key(trigger) not in {tag_key(t) for t in tags}:
        tags.insert(0, trigger)
    return add_affixes(config.tag_separator.join(tags), config)


def load_image(dataset_dir: Path, rel_path: str) -> Image.Image:
    """The image upright (EXIF orientation applied, as the trainer loads it), mode kept (alpha included)."""
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise DatasetError(
            f"{rel_path!r} is not a path inside the dataset", code="invalid_path", entry=rel_path
        )
    try:
        with Image.open(Path(dataset_dir) / rel) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return upright if upright is not img else img.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{rel_path!r} cannot be read for captioning: {exc}", code="unreadable_image", entry=rel_path
        ) from exc


def caption_dataset(
    layout: DatasetLayout,
    dataset_dir: Path,
    config: CaptionConfig,
    *,
    models_dir: Path,
    existing_captions: Mapping[str, str | None],
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    allow_download: bool = False,
    cache_dir: Path | None = None,
    device: str | None = None,
) -> dict[str, str]:
    """Caption the layout's training images; returns ``image path -> caption`` for the images captioned.

    - ``existing_captions``: image path (as in the layout) -> its current caption text (None/absent: none).
    - ``config.existing``: ``keep`` captions only images without a caption (the others are not in the
      result); ``overwrite`` replaces every caption; ``append`` extends existing captions (see merge_*).
    - prefix/postfix go around every returned caption; an empty result is possible (WD14 found no tag and
      there is no prefix): the trainer then falls back to the folder's caption.
    - ``on_progress(done, total)`` is called with (0, total) and after each batch; ``should_cancel()`` is
      polled before each batch and raises CaptioningCanceled (nothing is returned then).
    - The model is loaded only when there is something to caption; a model that cannot be found or loaded
      raises CaptionModelUnavailable. Nothing is downloaded unless ``allow_download``. It leaves memory
      (GPU included) before this returns or raises, so a training run that follows has the card.
    - ``trigger_placement`` takes each image's trigger and class word from its Kohya folder unless the
      config names them.
    """
    if config.method == "auto":
        # the API replaces `auto` with the family's captioner (CaptionConfig.for_family) before queueing
        raise LorabakeError(
            "captioning method 'auto' reached the worker unresolved; name a method",
            code="invalid_config",
            details={"field": "method"},
            status_code=422,
        )
    targets = images_to_caption(layout, config, existing_captions)
    total = len(targets)
    if on_progress is not None:
        on_progress(0, total)
    if not targets:
        return {}
    subjects = folder_subjects(layout)
    try:
        captioner = _load_captioner(config, models_dir, allow_download, cache_dir, device)
    except BaseException:
        free_memory()  # a model loaded before its processor failed is garbage now: free it all the same
        raise
    results: dict[str, str] = {}
    try:
        for start in range(0, total, config.batch_size):
            if should_cancel is not None and should_cancel():
                raise CaptioningCanceled(start, total)
            batch = targets[start : start + config.batch_size]
            images = [load_image(dataset_dir, path) for path in batch]
            for path, generated in zip(batch, captioner.infer(images), strict=True):
                results[path] = captioner.merge(
                    existing_captions.get(path), generated, config, subjects.get(path)
                )
            if on_progress is not None:
                on_progress(start + len(batch), total)
    finally:
        captioner.release()
        del captioner
        free_memory()
    return results


@dataclass
class LoadedCaptioner:
    """infer(images) -> sentences or tag lists; merge(existing caption, one of them, config, subject) -> the
    caption; release() drops the model (the runner then frees the memory)."""

    infer: Callable[[list[Image.Image]], list]
    merge: Callable[..., str]
    release: Callable[[], None]


def _load_captioner(
    config: CaptionConfig, models_dir: Path, allow_download: bool, cache_dir: Path | None, device: str | None
) -> LoadedCaptioner:
    """The config's captioner, loaded once."""
    lookup = {"allow_download": allow_download, "cache_dir": cache_dir}
    if config.method == "wd14":
        from worker.captioning.wd14 import Wd14Tagger

        tagger = Wd14Tagger.load(config.wd14_model, models_dir, **lookup)
        return LoadedCaptioner(lambda images: tagger.tag_images(images, config), merge_tags, tagger.release)
    if config.method == "blip":
        from worker.captioning.blip import BlipCaptioner

        model = BlipCaptioner.load(config.blip_model, models_dir, device=device, **lookup)
    elif config.method == "florence2":
        from worker.captioning.florence2 import Florence2Captioner

        model = Florence2Captioner.load(config, models_dir, device=device, **lookup)
    elif config.method == "qwen_vl":
        from worker.captioning.qwen_vl import QwenVLCaptioner

        model = QwenVLCaptioner.load(config, models_dir, device=device, **lookup)
    else:
        from worker.captioning.joycaption import JoyCaptionCaptioner

        model = JoyCaptionCaptioner.load(config, models_dir, device=device, **lookup)
    return LoadedCaptioner(lambda images: model.caption(images, config), merge_blip, model.release)


def free_memory() -> None:
    """After a captioner is released: collect it now and hand the GPU's cached blocks back, so a training
    run in the same worker gets the memory (a 7B VLM and a 12B transformer do not share a 24 GB card).
    torch is only looked at when a captioner imported it (WD14 runs without it)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
