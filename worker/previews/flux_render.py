"""FLUX.1 images for previews, drawn exactly as the training draws its samples (FluxModel.draw): the prompt
encoded by CLIP-L and T5 with the training's token length and padding mask, the pipeline fed the embeddings,
its own flow-matching Euler scheduler, the distilled guidance (--g, 3.5 unless given; none for schnell), no
negative prompt or CFG, a CPU generator seeded with the image's seed, so a LoRA at weight 1 gives the
training's sample of the same prompt and seed. Same interface as the SD Renderer, step hook included."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from shared.config.previews import FLUX_GUIDANCE, FLUX_SAMPLER
from worker.previews.render import ImageSettings, Renderer, StepHook, step_callback
from worker.training.families.chroma import T5_TOKENS as CHROMA_T5_TOKENS
from worker.training.families.chroma import encode_chroma_captions
from worker.training.families.flux import DEV_T5_TOKENS, SCHNELL_T5_TOKENS, encode_captions


@dataclass(frozen=True)
class T5Options:
    """How prompts are encoded: the training's t5xxl_max_token_length (None: the variant's default) and
    apply_t5_attn_mask."""

    max_tokens: int | None = None
    mask: bool = False


class FluxRenderer(Renderer):
    def __init__(self, pipe: Any, *, t5: T5Options, **kwargs: Any) -> None:
        super().__init__(pipe, family="flux1", **kwargs)
        self.dev = bool(pipe.transformer.config.guidance_embeds)
        self.max_tokens = t5.max_tokens or (DEV_T5_TOKENS if self.dev else SCHNELL_T5_TOKENS)
        self.t5_mask = t5.mask

    def effective(self, settings: ImageSettings) -> ImageSettings:
        guidance = FLUX_GUIDANCE if settings.guidance_scale is None else settings.guidance_scale
        return replace(
            settings, sampler=FLUX_SAMPLER, cfg_scale=1.0, negative_prompt="", guidance_scale=guidance
        )

    def render(self, settings: ImageSettings, on_step: StepHook | None = None) -> Image.Image:
        settings = self.effective(settings)
        pipe = self.pipe
        devices = [pipe.device] if pipe.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            generator = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on any device
            with self.autocast():
                text = encode_captions(
                    pipe,
                    [settings.prompt],
                    max_tokens=self.max_tokens,
                    t5_mask=self.t5_mask,
                    device=pipe.transformer.device,
                )
                dtype = pipe.transformer.dtype
                return pipe(
                    prompt_embeds=text.t5.to(dtype),
                    pooled_prompt_embeds=text.pooled.to(dtype),
                    width=settings.width,
                    height=settings.height,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale if self.dev else 0.0,
                    generator=generator,
                    max_sequence_length=self.max_tokens,
                    output_type="pil",
                    callback_on_step_end=step_callback(on_step, settings.steps),
                ).images[0]


class ChromaRenderer(Renderer):
    """Chroma images drawn as its training samples are (ChromaModel.draw): T5 with the training's token length
    and Chroma's mask, classifier-free guidance at the image's CFG scale against its negative prompt, the
    model's own Euler scheduler, a CPU generator seeded with the image's seed."""

    def __init__(self, pipe: Any, *, t5: T5Options, **kwargs: Any) -> None:
        super().__init__(pipe, family="chroma", **kwargs)
        self.max_tokens = t5.max_tokens or CHROMA_T5_TOKENS

    def effective(self, settings: ImageSettings) -> ImageSettings:
        return replace(settings, sampler=FLUX_SAMPLER, guidance_scale=None)

    def render(self, settings: ImageSettings, on_step: StepHook | None = None) -> Image.Image:
        settings = self.effective(settings)
        pipe = self.pipe
        devices = [pipe.device] if pipe.device.type == "cuda" else []
        device = pipe.transformer.device
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            generator = torch.Generator("cpu").manual_seed(settings.seed)
            with self.autocast():
                dtype = pipe.transformer.dtype
                texts = [settings.prompt, settings.negative_prompt]
                text = encode_chroma_captions(pipe, texts, max_tokens=self.max_tokens, device=device)
                return pipe(
                    prompt_embeds=text.t5[:1].to(dtype),
                    prompt_attention_mask=text.mask[:1] if text.mask is not None else None,
                    negative_prompt_embeds=text.t5[1:].to(dtype),
                    negative_prompt_attention_mask=text.mask[1:] if text.mask is not None else None,
                    width=settings.width,
                    height=settings.height,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.cfg_scale,
                    generator=generator,
                    max_sequence_length=self.max_tokens,
                    output_type="pil",
                    callback_on_step_end=step_callback(on_step, settings.steps),
                ).images[0]
