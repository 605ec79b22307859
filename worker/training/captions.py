"""Per-step caption processing with Kohya's options (sd-scripts library/train_util.py
BaseDataset.process_caption): prefix/suffix, whole-caption dropout (by rate or every N epochs), and for
comma-separated tags: keep_tokens / keep_tokens_separator, shuffle_caption, caption_tag_dropout_rate.

Pure Python; randomness comes from the random.Random the caller passes (seeded from the run seed), so a run
with the same seed sees the same captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEPARATOR = ","  # Kohya's --caption_separator default


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str | None = None
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0
    prefix: str | None = None
    suffix: str | None = None

    @classmethod
    def from_config(cls, config: object) -> CaptionOptions:
        return cls(
            shuffle=config.shuffle_caption,  # type: ignore[attr-defined]
            keep_tokens=config.keep_tokens,  # type: ignore[attr-defined]
            keep_tokens_separator=config.keep_tokens_separator,  # type: ignore[attr-defined]
            dropout_rate=config.caption_dropout_rate,  # type: ignore[attr-defined]
            dropout_every_n_epochs=config.caption_dropout_every_n_epochs,  # type: ignore[attr-defined]
            tag_dropout_rate=config.caption_tag_dropout_rate,  # type: ignore[attr-defined]
            prefix=config.caption_prefix,  # type: ignore[attr-defined]
            suffix=config.caption_suffix,  # type: ignore[attr-defined]
        )

    @property
    def varies(self) -> bool:
        """Whether a caption can change from step to step (then its text-encoder output cannot be cached:
        Kohya's is_text_encoder_output_cacheable, plus every-N-epochs dropout)."""
        return (
            self.shuffle
            or self.dropout_rate > 0
            or self.dropout_every_n_epochs > 0
            or self.tag_dropout_rate > 0
        )


def with_affixes(caption: str, options: CaptionOptions) -> str:
    """Prefix and suffix, each joined with one space (Kohya adds them before any other processing)."""
    if options.prefix:
        caption = options.prefix + " " + caption
    if options.suffix:
        caption = caption + " " + options.suffix
    return caption


def process_caption(caption: str, options: CaptionOptions, *, epoch: int, rng: random.Random) -> str:
    """One sample's caption for one step of `epoch` (1-based, as Kohya's current_epoch)."""
    caption = with_affixes(caption, options)
    dropped = options.dropout_rate > 0 and rng.random() < options.dropout_rate
    if not dropped and options.dropout_every_n_epochs > 0:
        dropped = epoch % options.dropout_every_n_epochs == 0
    if dropped:
        return ""
    caption = caption.split("\n")[0]
    if not (options.shuffle or options.tag_dropout_rate > 0):
        return caption

    fixed: list[str] = []
    fixed_suffix: list[str] = []
    separator = options.keep_tokens_separator
    if separator and separator in caption:
        # "fixed ||| flexible ||| fixed suffix": the outer parts stay in place, empty tags are dropped.
        fixed_part, flex_part = caption.split(separator, 1)
        if separator in flex_part:
            flex_part, suffix_part = flex_part.split(separator, 1)
            fixed_suffix = _tags(suffix_part)
        fixed = _tags(fixed_part)
        flex = _tags(flex_part)
    else:
        # Kohya keeps empty tags here ("a,,b" stays three tags); only the kept count is split off.
        flex = [t.strip() for t in caption.strip().split(SEPARATOR)]
        if options.keep_tokens > 0:
            fixed, flex = flex[: options.keep_tokens], flex[options.keep_tokens :]

    if options.shuffle:
        rng.shuffle(flex)
    if options.tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= options.tag_dropout_rate]
    return ", ".join(fixed + flex + fixed_suffix)


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(SEPARATOR) if t.strip()]
