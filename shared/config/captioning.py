"""Automatic captioning settings, in Kohya's vocabulary: BLIP sentences or WD14 (booru-style) tags.

Validated once where a client submits them (unknown fields and impossible values are errors naming the field)
and read unchanged by the worker. Pure pydantic: no torch.

Defaults follow Kohya: sd-scripts ``finetune/make_captions.py`` and ``finetune/tag_images_by_wd14_tagger.py``
and the bmaltais/kohya_ss captioning tabs, except ``num_beams`` (see below). The LoRA training guide's advice
for a character LoRA (trigger word as prefix, 10-15 beams, min length 25-30, WD14 character threshold 0.7) is
a preset's business, not a default.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

CaptionMethod = Literal["blip", "wd14"]
ExistingCaptions = Literal["keep", "overwrite", "append"]

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
DEFAULT_WD14_MODEL = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
# Text that ends up inside a caption file: the trainer reads the file's first line only, so no line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain line breaks or other control characters")
    return value


class CaptionConfig(BaseModel):
    """How to caption a dataset's training images. Field names follow Kohya's options where one exists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: CaptionMethod = Field(
        ..., description="`blip`: natural-language sentences (realistic subjects); `wd14`: tags (anime)."
    )
    existing: ExistingCaptions = Field(
        "keep",
        description="Images that already have a caption: `keep` it (not captioned), `overwrite` it, or "
        "`append` the new caption to it (WD14: only tags it does not have yet, as Kohya's --append_tags).",
    )
    prefix: str = Field(
        "",
        max_length=500,
        description="Put before every new caption, e.g. the trigger word `lisabp, `. Joined with one space.",
    )
    postfix: str = Field(
        "", max_length=500, description="Put after every new caption, joined with one space."
    )

    # --- BLIP (make_captions.py) ---
    blip_model: str = Field(
        DEFAULT_BLIP_MODEL,
        description="BLIP captioning model: a folder in the models directory, or a hub id (HF cache).",
    )
    beam_search: bool = Field(
        True, description="Beam search (deterministic); off: nucleus sampling with `top_p` (Kohya's default)."
    )
    num_beams: int = Field(
        10,
        ge=1,
        le=64,
        description="Beams in beam search; more gives more coherent, sentence-like captions (guide: 10-15).",
    )
    min_length: int = Field(
        5,
        ge=0,
        le=512,
        description="Minimum caption length in tokens, BLIP's 4-token prompt included (guide: 25-30).",
    )
    max_length: int = Field(
        75,
        ge=5,
        le=512,
        # checked against min_length when left at its default too (min_length 306 alone is refused)
        validate_default=True,
        description="Maximum caption length in tokens, prompt included.",
    )
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling's top_p (beam_search off only).")
    batch_size: int = Field(1, ge=1, le=64, description="Images per inference batch (BLIP and WD14).")

    # --- WD14 (tag_images_by_wd14_tagger.py, ONNX) ---
    wd14_model: str = Field(
        DEFAULT_WD14_MODEL,
        description="WD14 tagger (model.onnx + selected_tags.csv; v2 and v3 taggers): folder or hub id.",
    )
    general_threshold: float = Field(0.35, ge=0.0, le=1.0, description="Confidence to add a general tag.")
    character_threshold: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        description="Confidence to add a character tag (guide: 0.7 for a character LoRA).",
    )
    undesired_tags: list[str] = Field(
        default_factory=list, max_length=1000, description="Tags never written (`long_hair` = `long hair`)."
    )
    replace_underscores: bool = Field(
        True,
        description="`long_hair` -> `long hair`; kaomoji such as `^_^` are kept (Kohya's remove_underscore).",
    )
    always_first_tags: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Tags moved to the front, in this order, when the tagger finds them (e.g. `1girl`).",
    )
    trigger_first: str | None = Field(
        None, max_length=200, description="WD14: a word always written as the first tag (the trigger word)."
    )
    include_rating_tags: bool = Field(
        False, description="Add the most likely rating tag (general/sensitive/...) before the other tags."
    )
    tag_separator: str = Field(
        ", ", min_length=1, max_length=10, description="Between tags (Kohya's default)."
    )

    @field_validator("prefix", "postfix")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return _no_control(value)

    @field_validator("blip_model", "wd14_model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must name a model folder or a hub id")
        _no_control(value)
        if ".." in PurePosixPath(value.replace("\\", "/")).parts:
            raise ValueError("must not contain '..'")
        return value

    @field_validator("undesired_tags", "always_first_tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        # As Kohya splits its comma-separated options: blanks are dropped, each tag is stripped.
        tags = [_no_control(tag).strip() for tag in value]
        for tag in tags:
            if len(tag) > 200:
                raise ValueError("tags must be at most 200 characters")
        return [tag for tag in tags if tag]

    @field_validator("trigger_first")
    @classmethod
    def _trigger(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _no_control(value).strip()
        return value or None

    @field_validator("tag_separator")
    @classmethod
    def _separator(cls, value: str) -> str:
        _no_control(value)
        if not value.strip():
            # Existing captions are split on the stripped separator (as Kohya does when appending tags).
            raise ValueError("must contain a visible character, e.g. ', '")
        return value

    @field_validator("max_length")
    @classmethod
    def _not_below_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_length")  # validated before max_length (field order)
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least min_length ({minimum}); it is {value}")
        return value
