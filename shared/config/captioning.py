"""Automatic captioning settings: Kohya's two captioners (BLIP sentences, WD14 booru-style tags) and three
vision-language models (Florence-2, Qwen2.5-VL / Qwen3-VL, JoyCaption) for the families that learn from
natural-language captions.

Validated once where a client submits them (unknown fields and impossible values are errors naming the field)
and read unchanged by the worker. Pure pydantic: no torch.

BLIP/WD14 defaults follow Kohya: sd-scripts ``finetune/make_captions.py`` and
``finetune/tag_images_by_wd14_tagger.py`` and the bmaltais/kohya_ss captioning tabs, except ``num_beams`` (see
below). The LoRA training guide's advice for a character LoRA (trigger word as prefix, 10-15 beams, min length
25-30, WD14 character threshold 0.7) is a preset's business, not a default. The vision-language models decode
greedily by default (the same image always gets the same caption); sampling is opt-in.

``method: "auto"`` takes the base model family's captioner from :data:`CAPTIONER_FOR_FAMILY`, the one place
that mapping lives (see :func:`for_family`).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shared.errors import LorabakeError
from shared.model_families import ModelFamily

CaptionMethod = Literal["auto", "blip", "wd14", "florence2", "qwen_vl", "joycaption"]
ExistingCaptions = Literal["keep", "overwrite", "append"]
# Florence-2 is steered by task tokens only (it was trained on them, not on free instructions).
Florence2Task = Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"]
# JoyCaption Beta One's caption types, its names snake_cased (templates: worker/captioning/joycaption.py).
JoyCaptionType = Literal[
    "descriptive",
    "descriptive_casual",
    "straightforward",
    "training_prompt",
    "midjourney",
    "danbooru_tags",
    "booru_tags",
]
CaptionLength = Literal["any", "very_short", "short", "medium", "long", "very_long"]
Precision = Literal["auto", "bf16", "fp16", "fp32", "8bit"]
TriggerPlacement = Literal["none", "first", "subject"]

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
DEFAULT_WD14_MODEL = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
# transformers' own Florence-2 format (microsoft/Florence-2-* needs remote code: refused by the worker)
DEFAULT_FLORENCE2_MODEL = "florence-community/Florence-2-large"
DEFAULT_QWEN_VL_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# the LLaVA-format release (the other JoyCaption repos need their own code)
DEFAULT_JOYCAPTION_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"
MODEL_FIELD = {
    "blip": "blip_model",
    "wd14": "wd14_model",
    "florence2": "florence2_model",
    "qwen_vl": "qwen_vl_model",
    "joycaption": "joycaption_model",
}

# What `method: "auto"` becomes for each base-model family: the one place this mapping lives. SD1.x/SD2.x/SDXL
# learn from CLIP's 75-token window and the community's SD checkpoints speak booru tags (Kohya's WD14); the
# flow-matching families read long T5 captions, so they get a detailed sentence.
CAPTIONER_FOR_FAMILY: dict[ModelFamily, dict[str, Any]] = {
    "sd1": {"method": "wd14"},
    "sd2": {"method": "wd14"},
    "sdxl": {"method": "wd14"},
    "flux1": {"method": "florence2", "florence2_task": "<DETAILED_CAPTION>"},
    "chroma": {"method": "florence2", "florence2_task": "<DETAILED_CAPTION>"},
}
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
        ...,
        description="`blip`: short sentences (Kohya's); `wd14`: booru tags (anime SD models); `florence2`, "
        "`qwen_vl`, `joycaption`: detailed captions from a vision-language model (FLUX and the other "
        "flow-matching families); `auto`: the base model family's captioner (docs/datasets.md).",
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
    batch_size: int = Field(1, ge=1, le=64, description="Images per inference batch (every method).")

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

    # --- vision-language models (florence2, qwen_vl, joycaption) ---
    florence2_model: str = Field(DEFAULT_FLORENCE2_MODEL, description="Florence-2 model: folder or hub id.")
    florence2_task: Florence2Task = Field(
        "<DETAILED_CAPTION>",
        description="Florence-2's task prompt: one sentence, a detailed one, or a paragraph.",
    )
    qwen_vl_model: str = Field(
        DEFAULT_QWEN_VL_MODEL, description="Qwen2.5-VL or Qwen3-VL (Instruct) model: folder or hub id."
    )
    joycaption_model: str = Field(
        DEFAULT_JOYCAPTION_MODEL, description="JoyCaption (LLaVA format) model: folder or hub id."
    )
    joycaption_type: JoyCaptionType = Field(
        "descriptive", description="JoyCaption's caption type (its own prompt templates)."
    )
    caption_length: CaptionLength | Annotated[int, Field(ge=5, le=500)] = Field(
        "any",
        description="qwen_vl/joycaption: `any` (the model decides), a size from `very_short` to "
        "`very_long`, or a number of words.",
    )
    instruction: str | None = Field(
        None,
        max_length=2000,
        description="qwen_vl/joycaption: your own instruction instead of the built-in one; the length "
        "(`caption_length`) is still added unless it is `any`.",
    )
    max_new_tokens: int = Field(
        512, ge=1, le=2048, description="Most tokens a vision-language model writes per caption."
    )
    do_sample: bool = Field(
        False,
        description="Vision-language models: sample (`temperature`, `top_p`, seeded per batch) instead of "
        "greedy/beam decoding. Off: the same image always gets the same caption.",
    )
    temperature: float = Field(0.6, gt=0.0, le=2.0, description="Sampling temperature (`do_sample` only).")
    precision: Precision = Field(
        "auto",
        description="Vision-language model weights: `auto` (bf16 on a GPU that has it, else fp16; fp32 on "
        "CPU), `bf16`, `fp16` (GPU only), `fp32`, or `8bit` (bitsandbytes, GPU only).",
    )

    # --- trigger word (sentence captioners; WD14 also has trigger_first) ---
    trigger_placement: TriggerPlacement = Field(
        "none",
        description="`first`: the trigger word starts the caption (`lisabp, a woman ...`, Kohya's "
        "keep_tokens habit); `subject`: it replaces the article before the class word (`a woman` -> "
        "`lisabp woman`), else goes first; `none`: not added. Skipped when the caption already has it.",
    )
    trigger_word: str | None = Field(
        None, max_length=200, description="The trigger word; unset: the Kohya folder's (`6_lisabp woman`)."
    )
    class_word: str | None = Field(
        None, max_length=200, description="The class word; unset: the Kohya folder's (`woman`)."
    )

    @field_validator("prefix", "postfix")
    @classmethod
    def _single_line(cls, value: str) -> str:
        return _no_control(value)

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        # line breaks are fine in an instruction; other control characters are not
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
            raise ValueError("must not contain control characters other than line breaks")
        method = info.data.get("method")  # validated before (field order); `auto` is checked once it chose
        if method in ("blip", "wd14", "florence2"):
            hint = "; Florence-2 is steered by florence2_task" if method == "florence2" else ""
            raise ValueError(f"{method} takes no instruction (qwen_vl and joycaption do{hint})")
        return value.strip() or None

    @field_validator("caption_length", mode="before")
    @classmethod
    def _length(cls, value: object) -> object:
        # one message naming the field, not one per branch of the union
        sizes = get_args(CaptionLength)
        if value in sizes or (type(value) is int and 5 <= value <= 500):
            return value
        raise ValueError(f"must be one of {', '.join(sizes)}, or a number of words from 5 to 500")

    @field_validator("trigger_word", "class_word")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        return (_no_control(value).strip() or None) if value is not None else None

    @field_validator("blip_model", "wd14_model", "florence2_model", "qwen_vl_model", "joycaption_model")
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

    def model_ref(self) -> str | None:
        """The model the method loads (None for `auto`, which has not chosen yet)."""
        field = MODEL_FIELD.get(self.method)
        return getattr(self, field) if field else None

    def captioner(self) -> dict[str, Any]:
        """What a caption revision records: the method, its model and every option."""
        return {"method": self.method, "model": self.model_ref(), "options": self.model_dump(mode="json")}

    def for_family(self, family: str | None, field: str = "method") -> CaptionConfig:
        """The config with `auto` replaced by the family's captioner (CAPTIONER_FOR_FAMILY); unchanged when a
        method was named. A 422 naming `field` when there is no family to choose from, and naming the field
        at fault when an option does not fit the chosen captioner."""
        if self.method != "auto":
            return self
        chosen = CAPTIONER_FOR_FAMILY.get(family or "")  # type: ignore[call-overload]
        if chosen is None:
            why = (
                "is 'auto' but the base model's family is not known"
                if family is None
                else f"is 'auto' but no captioner is chosen for family {family!r}"
            )
            raise _refusal(f"{field} {why}; name a method ({', '.join(MODEL_FIELD)})", [(field, why)])
        # The family's choice fills what the client left unset; what the client set stays.
        values = {**chosen, **self.model_dump(exclude_unset=True), "method": chosen["method"]}
        try:
            return CaptionConfig.model_validate(values)
        except ValidationError as exc:
            prefix = field.rsplit(".", 1)[0] + "." if "." in field else ""
            errors = [
                (prefix + ".".join(map(str, e["loc"])) if e["loc"] else field, e["msg"]) for e in exc.errors()
            ]
            raise _refusal(
                f"{field} 'auto' chose {chosen['method']}: " + "; ".join(m for _, m in errors), errors
            ) from exc


def _refusal(message: str, fields: list[tuple[str, str]]) -> LorabakeError:
    return LorabakeError(
        message,
        code="invalid_config",
        details={"fields": [{"field": f, "message": m} for f, m in fields]},
        status_code=422,
    )
