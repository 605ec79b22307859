"""Qwen2.5-VL / Qwen3-VL captioner: a chat prompt (the image, then an instruction the user may replace)
through the model's own chat template, greedy decoding, the answer as the caption.

transformers' Qwen processors also hold a video processor, which exists only with torchvision; a caption job
has no video, so the processors here are built from the image processor and the tokenizer alone (the same
placeholder expansion and multimodal token types, so the model's 3D rope positions are the real ones).
Images are capped at MAX_PIXELS: Qwen2.5-VL's own limit (12.8 MP, about 16k visual tokens per photo) would
not fit a 24 GB card beside a 7B model in a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from shared.config.captioning import CaptionConfig
from worker.captioning.vlm import VlmCaptioner, chat_processor

KIND = "Qwen-VL"
MAX_PIXELS = 1024 * 28 * 28  # about 1024 visual tokens per image (Qwen2.5-VL), 784 (Qwen3-VL)
DEFAULT_INSTRUCTION = (
    "Describe this image as a caption for training a text-to-image model. Start with the main subject, then "
    "describe clothing, pose, expression, the setting, lighting, colors and the style or medium. Write plain "
    "prose in one paragraph: no lists, no markdown, and no opening such as 'This image shows'."
)
LENGTH_WORDS = {"very_short": 15, "short": 30, "medium": 60, "long": 120, "very_long": 200}


class _ImageOnlyQwen25Processor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        # no video_processor: the base class keeps the attributes its signature names
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


class _ImageOnlyQwen3Processor(Qwen3VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


ARCHITECTURES = {
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, _ImageOnlyQwen25Processor),
    "qwen3_vl": (Qwen3VLForConditionalGeneration, _ImageOnlyQwen3Processor),
}


def length_sentence(length: str | int) -> str:
    if length == "any":
        return ""
    words = length if isinstance(length, int) else LENGTH_WORDS[length]
    return f"Use at most {words} words."


def instruction(config: CaptionConfig) -> str:
    """The user turn's text: the custom instruction or ours, then the length (unless `any`)."""
    return " ".join(
        p for p in (config.instruction or DEFAULT_INSTRUCTION, length_sentence(config.caption_length)) if p
    )


class QwenVLCaptioner(VlmCaptioner):
    KIND = KIND
    MODEL_FIELD = "qwen_vl_model"
    ARCHITECTURE = "Qwen2.5-VL or Qwen3-VL"
    SKIP_QUANTIZING = ("visual",)

    @classmethod
    def architectures(cls) -> Mapping[str, tuple[type, type]]:
        return ARCHITECTURES

    @classmethod
    def prepare_processor(cls, processor: Any, folder: Path, ref: str) -> None:
        chat_processor(processor, KIND, ref, folder, " (an Instruct model has one)")

    def prompts(self, config: CaptionConfig, count: int) -> list[str]:
        """The chat-templated prompts, as the model sees them (before the image placeholders expand)."""
        turn = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction(config)}]}
        ]
        return [self.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)] * count

    def processor_kwargs(self, texts: list[str]) -> dict[str, Any]:
        size = self.processor.image_processor.size
        limit = {
            "shortest_edge": size["shortest_edge"],
            "longest_edge": min(size["longest_edge"], MAX_PIXELS),
        }
        return {"size": limit, "padding": True}
