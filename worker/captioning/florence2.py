"""Florence-2 captioner (transformers' Florence2ForConditionalGeneration).

Florence-2 was trained on task tokens, not instructions: ``<CAPTION>`` (one short sentence),
``<DETAILED_CAPTION>`` (a few sentences), ``<MORE_DETAILED_CAPTION>`` (a paragraph); its processor turns the
token into the question the model learned. Decoding as its model card does: 3 beams, no sampling. The
checkpoints must be in transformers' own format (florence-community/Florence-2-base|large); Microsoft's
original repos need remote code and are refused by name (vlm.find_model).
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.config.captioning import CaptionConfig
from worker.captioning.vlm import VlmCaptioner

KIND = "Florence-2"
NUM_BEAMS = 3  # Florence-2's model card decodes every task with 3 beams


class Florence2Captioner(VlmCaptioner):
    KIND = KIND
    MODEL_FIELD = "florence2_model"
    ARCHITECTURE = "Florence-2"
    SKIP_QUANTIZING = ("vision_tower",)
    NUM_BEAMS = NUM_BEAMS
    ENCODER_DECODER = True

    @classmethod
    def architectures(cls) -> Mapping[str, tuple[type, type]]:
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        return {"florence2": (Florence2ForConditionalGeneration, Florence2Processor)}

    def prompts(self, config: CaptionConfig, count: int) -> list[str]:
        return [config.florence2_task] * count
