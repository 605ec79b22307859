"""BLIP captioner (transformers' BlipForConditionalGeneration) with the options of Kohya's make_captions.py.

Kohya's reference: sd-scripts ``finetune/make_captions.py`` + ``finetune/blip/blip.py``. As there, the
decoder is conditioned on the prompt ``"a picture of "``, which is cut from the result, and ``min_length`` /
``max_length`` count tokens including that prompt (4 tokens with the start token); beam search runs with
``repetition_penalty=1.0``, nucleus sampling (``beam_search`` off) with ``top_p``, ``repetition_penalty=1.1``
and a fixed seed (Kohya seeds 42). Kohya loads the original Salesforce checkpoint; here it is the transformers
port (``Salesforce/blip-image-captioning-large`` by default), same weights and preprocessing (384 px bicubic,
CLIP mean/std). Transparent pixels are put on white before that (Kohya drops alpha as is).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from shared.catalogue.captioners import DOWNLOAD_PATTERNS as CAPTIONER_DOWNLOADS
from shared.config.captioning import CaptionConfig
from worker.captioning import CaptionModelUnavailable, resolve_caption_model
from worker.captioning.wd14 import flatten_on_white

BLIP_PROMPT = "a picture of "
SAMPLING_SEED = 42
SAMPLING_REPETITION_PENALTY = 1.1
# Config, processor and tokenizer files, safetensors weights; not the .bin/.h5 copies of the same weights.
DOWNLOAD_PATTERNS = CAPTIONER_DOWNLOADS["blip"]


class BlipCaptioner:
    """A loaded BLIP captioning model with its processor."""

    def __init__(self, model, processor, device: torch.device, ref: str) -> None:  # noqa: ANN001
        self.model = model
        self.processor = processor
        self.device = device
        self.ref = ref
        self._batches = 0

    @classmethod
    def load(
        cls,
        ref: str,
        models_dir: Path,
        *,
        allow_download: bool = False,
        cache_dir: Path | None = None,
        device: str | torch.device | None = None,
    ) -> BlipCaptioner:
        """Load from a folder in ``models_dir`` or the HF cache (``local_files_only``; ``allow_download``
        fetches a hub id into the cache first). Any failure is a CaptionModelUnavailable."""
        folder = resolve_caption_model(
            "BLIP",
            ref,
            models_dir,
            required_files=("config.json",),
            download_patterns=DOWNLOAD_PATTERNS,
            allow_download=allow_download,
            cache_dir=cache_dir,
        )
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            BlipForConditionalGeneration,
            BlipProcessor,
        )

        target = torch.device(device) if device is not None else _default_device()
        try:
            model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True)
            # The PIL backend: the same pixels with or without torchvision installed.
            image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        except Exception as exc:
            raise CaptionModelUnavailable(
                "BLIP", ref, f"failed to load {folder}: {type(exc).__name__}: {exc}"
            ) from exc
        return cls(model.to(target).eval(), processor, target, ref)

    def generation_kwargs(self, config: CaptionConfig) -> dict:
        """The arguments ``generate`` gets for ``config``: Kohya's beam search or nucleus sampling."""
        lengths = {"max_length": config.max_length, "min_length": config.min_length}
        if config.beam_search:
            return {**lengths, "num_beams": config.num_beams, "do_sample": False, "repetition_penalty": 1.0}
        return {
            **lengths,
            "num_beams": 1,
            "do_sample": True,
            "top_p": config.top_p,
            "repetition_penalty": SAMPLING_REPETITION_PENALTY,
        }

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image], config: CaptionConfig) -> list[str]:
        """One caption per image (the prompt cut off), generated as one batch."""
        if not images:
            return []
        inputs = self.processor(
            images=[flatten_on_white(image) for image in images],
            text=[BLIP_PROMPT] * len(images),
            return_tensors="pt",
        )
        kwargs = self.generation_kwargs(config)
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            # Sampling is seeded as in Kohya (42), here per batch (42, 43, ...): reproducible for a given run,
            # without every batch repeating the same draws. Beam search uses no randomness.
            torch.manual_seed(SAMPLING_SEED + self._batches)
            self._batches += 1
            out = self.model.generate(
                pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype),
                input_ids=inputs["input_ids"].to(self.device),
                **kwargs,
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [strip_prompt(text) for text in texts]

    def release(self) -> None:
        self.model = self.processor = None


def strip_prompt(text: str) -> str:
    """``"a picture of a woman"`` -> ``"a woman"`` (the decoder repeats its prompt; Kohya cuts it off too)."""
    text = " ".join(text.split())
    prompt = BLIP_PROMPT.strip()
    if text.lower() == prompt or text.lower().startswith(prompt + " "):
        text = text[len(prompt) :]
    return text.strip()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
