"""JoyCaption captioner (the LLaVA-format release, transformers' LlavaForConditionalGeneration).

Prompts are JoyCaption Beta One's: a caption type's instruction in one of three forms (no length, a word
count, or a size word), after its default system prompt, through the model's chat template (which places the
image). Caption types, their instructions and the size words are the ones the model was trained on
(fpgaminer/joycaption, gradio-app): rewording them costs caption quality. ``training_prompt`` is Beta One's
"Stable Diffusion Prompt" type (Alpha Two called it "Training Prompt").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.config.captioning import CaptionConfig
from worker.captioning.vlm import VlmCaptioner, chat_processor

KIND = "JoyCaption"
SYSTEM_PROMPT = (
    "You are a helpful assistant and help users with any queries they may have with no censorship or "
    "restrictions."
)
_STRAIGHTFORWARD_RULES = (
    "Begin with the main subject and medium. Mention pivotal elements—people, objects, scenery—using "
    "confident, definite language. Focus on concrete details like color, shape, texture, and spatial "
    "relationships. Show how elements interact. Omit mood and speculative wording. If text is present, quote "
    "it exactly. Note any watermarks, signatures, or compression artifacts. Never mention what's absent, "
    "resolution, or unobservable details. Vary your sentence structure and keep the description concise, "
    "without starting with “This image is…” or similar phrasing."
)
_DANBOORU = (
    "Generate only comma-separated Danbooru tags (lowercase_underscores). Strict order: `artist:`, "
    "`copyright:`, `character:`, `meta:`, then general tags. Include counts (1girl), appearance, clothing, "
    "accessories, pose, expression, actions, background. Use precise Danbooru syntax. No extra text."
)
_SD_PROMPT = "stable diffusion prompt that is indistinguishable from a real stable diffusion prompt"
# caption type -> (no length, with {words}, with {size}): the three forms each type was trained with
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "descriptive": (
        "Write a detailed description for this image.",
        "Write a detailed description for this image in {words} words or less.",
        "Write a {size} detailed description for this image.",
    ),
    "descriptive_casual": (
        "Write a descriptive caption for this image in a casual tone.",
        "Write a descriptive caption for this image in a casual tone within {words} words.",
        "Write a {size} descriptive caption for this image in a casual tone.",
    ),
    "straightforward": (
        f"Write a straightforward caption for this image. {_STRAIGHTFORWARD_RULES}",
        f"Write a straightforward caption for this image within {{words}} words. {_STRAIGHTFORWARD_RULES}",
        f"Write a {{size}} straightforward caption for this image. {_STRAIGHTFORWARD_RULES}",
    ),
    "training_prompt": (
        f"Output a {_SD_PROMPT}.",
        f"Output a {_SD_PROMPT}. {{words}} words or less.",
        f"Output a {{size}} {_SD_PROMPT}.",
    ),
    "midjourney": (
        "Write a MidJourney prompt for this image.",
        "Write a MidJourney prompt for this image within {words} words.",
        "Write a {size} MidJourney prompt for this image.",
    ),
    "danbooru_tags": (_DANBOORU, f"{_DANBOORU} {{words}} words or less.", f"{_DANBOORU} {{size}} length."),
    "booru_tags": (
        "Write a list of Booru-like tags for this image.",
        "Write a list of Booru-like tags for this image within {words} words.",
        "Write a {size} list of Booru-like tags for this image.",
    ),
}
SIZE_WORDS = {
    "very_short": "very short",
    "short": "short",
    "medium": "medium-length",
    "long": "long",
    "very_long": "very long",
}


def prompt(config: CaptionConfig) -> str:
    """The user turn: the caption type's template in the form the length asks for, or the custom instruction
    with the length in JoyCaption's "Keep it ..." wording."""
    length = config.caption_length
    if config.instruction is not None:
        if length == "any":
            return config.instruction
        keep = f"within {length} words" if isinstance(length, int) else SIZE_WORDS[length]
        return f"{config.instruction} Keep it {keep}."
    plain, counted, sized = TEMPLATES[config.joycaption_type]
    if length == "any":
        return plain
    if isinstance(length, int):
        return counted.replace("{words}", str(length))
    return sized.replace("{size}", SIZE_WORDS[length])


class JoyCaptionCaptioner(VlmCaptioner):
    KIND = KIND
    MODEL_FIELD = "joycaption_model"
    ARCHITECTURE = "a LLaVA-format JoyCaption"
    # JoyCaption's own 8-bit loader skips these: its SigLIP tower misbehaves quantized
    SKIP_QUANTIZING = ("vision_tower", "multi_modal_projector")

    @classmethod
    def architectures(cls) -> Mapping[str, tuple[type, type]]:
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        return {"llava": (LlavaForConditionalGeneration, LlavaProcessor)}

    @classmethod
    def prepare_processor(cls, processor: Any, folder: Path, ref: str) -> None:
        chat_processor(processor, KIND, ref, folder)
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token

    def prompts(self, config: CaptionConfig, count: int) -> list[str]:
        """The chat-templated prompts. JoyCaption's template puts the image token into the user turn; one
        that does not gets it in front of the instruction."""
        user = prompt(config).strip()
        text = self._render(user)
        if self.processor.image_token not in text:
            text = self._render(self.processor.image_token + user)
        return [text] * count

    def _render(self, user: str) -> str:
        turns = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        return self.processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def processor_kwargs(self, texts: list[str]) -> dict[str, Any]:
        bos = self.processor.tokenizer.bos_token
        # the template already wrote <bos>: a second one degrades LLaVA-Llama's output
        return {"padding": "longest", "add_special_tokens": not (bos and texts[0].startswith(bos))}
