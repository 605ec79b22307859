"""Florence-2 captioner (transformers' Florence2ForConditionalGeneration).

Florence-2 was trained on task tokens, not instructions: ``<CAPTION>`` (one short sentence),
``<DETAILED_CAPTION>`` (a few sentences), ``<MORE_DETAILED_CAPTION>`` (a paragraph); its processor turns the
token into the question the model learned. Decoding as its model card does: 3 beams, no sampling. The
checkpoints must be in transformers' own format (florence-community/Florence-2-base|large); Microsoft's
original repos need remote code and are refused by name (vlm.find_model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from shared.config.captioning import CaptionConfig
from worker.captioning import CaptionModelUnavailable
from worker.captioning.vlm import (
    find_model,
    generation_kwargs,
    load_model,
    load_processor,
    one_line,
    resolve_device,
    seeded_generate,
    to_device,
)
from worker.captioning.wd14 import flatten_on_white

KIND = "Florence-2"
NUM_BEAMS = 3  # Florence-2's model card decodes every task with 3 beams


class Florence2Captioner:
    def __init__(self, model, processor, ref: str) -> None:  # noqa: ANN001
        self.model = model
        self.processor = processor
        self.ref = ref
        self._batches = 0

    @classmethod
    def load(
        cls,
        config: CaptionConfig,
        models_dir: Path,
        *,
        allow_download: bool = False,
        cache_dir: Path | None = None,
        device: str | torch.device | None = None,
    ) -> Florence2Captioner:
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        ref = config.florence2_model
        folder, model_config = find_model(
            KIND, ref, models_dir, allow_download=allow_download, cache_dir=cache_dir
        )
        if model_config.get("model_type") != "florence2":
            raise CaptionModelUnavailable(
                KIND, ref, f"{folder} is a {model_config.get('model_type')!r} model, not Florence-2"
            )
        target = resolve_device(device)
        model = load_model(
            Florence2ForConditionalGeneration, folder, KIND, ref, config, target, ("vision_tower",)
        )
        return cls(model, load_processor(Florence2Processor, folder, KIND, ref), ref)

    def prompts(self, config: CaptionConfig, count: int) -> list[str]:
        return [config.florence2_task] * count

    def caption(self, images: Sequence[Image.Image], config: CaptionConfig) -> list[str]:
        if not images:
            return []
        inputs = self.processor(
            text=self.prompts(config, len(images)),
            images=[flatten_on_white(image) for image in images],
            return_tensors="pt",
        )
        out = seeded_generate(
            self.model, to_device(inputs, self.model), generation_kwargs(config, NUM_BEAMS), self._batches
        )
        self._batches += 1
        # encoder-decoder: the output is the answer alone (no prompt to cut)
        return [one_line(text) for text in self.processor.batch_decode(out, skip_special_tokens=True)]

    def release(self) -> None:
        self.model = self.processor = None
