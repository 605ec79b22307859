"""Chroma (lodestones' FLUX.1-schnell derivative): FLUX.1's transformer, VAE and packed latents with T5-XXL
alone, no guidance embedding, and every block's modulation computed by one `distilled_guidance_layer`.

Trained as sd-scripts' flux_train_network.py trains `--model_type chroma` (kohya-ss/sd-scripts 48d368f):
- text: T5 run with its attention mask, and the transformer shown the caption's tokens plus the first padding
  token (sd-scripts' `attn_padding=1`, diffusers' ChromaPipeline, lodestones' model card); no CLIP, no pooled
  vector. T5 reads 512 tokens (Chroma has no schnell/dev split) and stays frozen.
- objective: FluxModel's rectified flow (flow_matching.py) with sd-scripts' Chroma recommendation,
  `--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0` (docs/flux_train_network.md).
- LoRA: every Linear of the double and single blocks, which in Chroma has no modulation Linear (flux_names:
  CHROMA_DOUBLE_BLOCK / CHROMA_SINGLE_BLOCK); files named and fused as sd-scripts' FLUX.1 ones.
- samples: classifier-free guidance with --l (4.0 unless given, sd-scripts' docs and ai-toolkit's example)
  and --n as the negative prompt; --g means nothing (no guidance embedding).

The text tokens are cut to the longest visible caption of the batch before the transformer (as sd-scripts
does): the same outputs as masking them, cheaper, and immune to diffusers' Chroma single blocks dropping
the mask under gradient checkpointing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from shared.config.family_options import family_conflicts
from shared.config.sample_prompts import SamplePrompt
from shared.config.spec import TrainingConfig
from worker.training import base_quantization, flow_matching
from worker.training.errors import TrainingSetupError
from worker.training.families.base import WEIGHT_DTYPES
from worker.training.families.flux import SAMPLER, FluxModel, TextConditioning
from worker.training.model_loading import BaseModelError, ResolvedModel, shown

FAMILY = "chroma"
T5_TOKENS = 512  # sd-scripts: Chroma is never schnell, so its t5xxl_max_token_length default is dev's
VISIBLE_PADDING = 1  # padding tokens the transformer sees after the caption (sd-scripts' attn_padding)
DEFAULT_SAMPLE_CFG = 4.0  # sd-scripts' docs (`--l 4.0` for Chroma), ai-toolkit's train_lora_chroma_24gb.yaml


def check_config(config: TrainingConfig) -> None:
    conflicts = family_conflicts(config, FAMILY)
    if conflicts:
        field, why = conflicts[0]
        raise TrainingSetupError(f"{field} {why}", details={"field": field})


def encode_chroma_captions(
    pipe: Any, captions: Sequence[str], *, max_tokens: int, device: torch.device
) -> TextConditioning:
    """T5's hidden states with the attention mask applied, and the mask the transformer gets: the caption's
    tokens (its EOS included) and VISIBLE_PADDING padding tokens after them (bool [N, L])."""
    tokens = pipe.tokenizer(
        list(captions), padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt"
    )
    mask = tokens.attention_mask.to(device)
    with torch.no_grad():  # T5 is frozen
        t5 = pipe.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    positions = torch.arange(mask.shape[1], device=device)[None, :]
    visible = positions < mask.sum(dim=1, keepdim=True) + VISIBLE_PADDING
    return TextConditioning(t5=t5, pooled=None, mask=visible)


def sample_cfg(prompt: SamplePrompt) -> float:
    return prompt.cfg_scale if "cfg_scale" in prompt.model_fields_set else DEFAULT_SAMPLE_CFG


def chroma_prompt(prompt: SamplePrompt) -> SamplePrompt:
    """The prompt as Chroma draws it, so the PNG's parameters say what was used: CFG at --l (4 unless
    given) with --n, no distilled guidance, the model's own Euler scheduler whatever --ss said."""
    update = {"cfg_scale": sample_cfg(prompt), "guidance_scale": None, "sampler": SAMPLER}
    return prompt.model_copy(update=update)


class ChromaModel(FluxModel):
    """A loaded Chroma base model for one run: FluxModel's data, loss and export with Chroma's text encoding,
    transformer call, targets, metadata and sampling."""

    family = FAMILY
    family_label = "Chroma"
    # sd-scripts' docs for Chroma: `--timestep_sampling sigmoid` (sigmoid_scale 1.0)
    timestep_defaults = flow_matching.TimestepSampling(method="sigmoid")

    def __init__(self, pipe: Any):
        self.pipeline = pipe
        self.variant = FAMILY  # no guidance embedding: FlowLoss feeds none
        self.sample_text: dict[str, TextConditioning] = {}

    @classmethod
    def load(cls, resolved: ResolvedModel, family: str, config: TrainingConfig) -> ChromaModel:
        check_config(config)
        return cls(load_chroma_pipeline(resolved, dtype=WEIGHT_DTYPES[config.mixed_precision]))

    def max_tokens(self, config: TrainingConfig) -> int:
        return config.t5xxl_max_token_length or T5_TOKENS

    def encode_text(
        self, captions: Sequence[str], *, max_tokens: int, t5_mask: bool, device: torch.device
    ) -> TextConditioning:
        return encode_chroma_captions(self.pipeline, captions, max_tokens=max_tokens, device=device)

    def sample_texts(self, config: TrainingConfig) -> set[str]:
        prompts = super().sample_texts(config)
        return prompts | {p.negative_prompt for p in self.sample_prompts(config) if sample_cfg(p) > 1}

    def denoise(
        self,
        packed: torch.Tensor,
        text: TextConditioning,
        sigmas: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: float | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        assert text.mask is not None
        n, seq_len, _ = packed.shape
        keep = int(text.mask.sum(dim=1).max().item())  # the longest visible caption of the batch
        mask = text.mask[:, :keep].bool()
        joint = torch.cat([mask, torch.ones(n, seq_len, device=packed.device, dtype=torch.bool)], dim=1)
        return self.transformer(
            hidden_states=packed.to(dtype),
            encoder_hidden_states=text.t5[:, :keep].to(dtype),
            timestep=sigmas.to(dtype),
            img_ids=img_ids.to(dtype),
            txt_ids=torch.zeros(keep, 3, device=packed.device, dtype=dtype),
            attention_mask=None if bool(mask.all()) else joint,
            return_dict=False,
        )[0]

    def trains_text_encoder(self, config: TrainingConfig) -> bool:
        return False  # no CLIP-L; T5 is always frozen (FluxModel.add_network does the rest)

    def _place_text_encoders(self, config: TrainingConfig, device: torch.device, dtype: torch.dtype) -> None:
        """T5-XXL alone, stored as the base weights are (it is always frozen)."""
        t5 = self.pipeline.text_encoder
        base_quantization.quantize_frozen(t5, base_quantization.mode_of(config), dtype)
        base_quantization.place(t5, device, dtype)


    def _release_text_encoders(self) -> None:
        self.pipeline.register_modules(text_encoder=None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def trainable_models(self) -> dict[str, torch.nn.Module | None]:
        return {"transformer": self.transformer}

    def set_train(self, training: bool, *, train_text_encoder: bool) -> None:
        self.transformer.train(training)

    def metadata(self, config: TrainingConfig) -> dict[str, str]:
        """What sd-scripts writes for --model_type chroma: ss_model_type, its modelspec architecture
        (sai_model_spec.py's ARCH_FLUX_1_CHROMA) and implementation."""
        fields = super().metadata(config)
        fields.update(
            {
                "ss_model_type": FAMILY,
                "ss_base_model_version": FAMILY,  # sd-scripts' flux_utils.MODEL_VERSION_CHROMA
                "ss_guidance_scale": "0.0",
                "ss_apply_t5_attn_mask": "True",
                "ss_network_train_unet_only": "True",
                "ss_text_encoder_lr": "0.0",
                "modelspec.architecture": "chroma/lora",
                "modelspec.implementation": "https://huggingface.co/lodestones/Chroma",
            }
        )
        return fields

    def sample_prompt(self, prompt: SamplePrompt) -> SamplePrompt:
        return chroma_prompt(prompt)

    def draw(
        self, prompt: SamplePrompt, generator: torch.Generator, *, max_tokens: int, t5_mask: bool
    ) -> Image.Image:
        """One image for a Kohya prompt line, drawn by ChromaPipeline from the cached (or fresh) T5 states
        with the training's mask: CFG at --l (sample_cfg) against --n, --w/--h/--s/--d as for SD."""
        pipe = self.pipeline
        device = pipe.transformer.device

        def text(value: str) -> TextConditioning:
            cached = self.sample_text.get(value)
            if cached is not None:
                return cached
            return self.encode_text([value], max_tokens=max_tokens, t5_mask=True, device=device)

        cfg = sample_cfg(prompt)
        positive = text(prompt.prompt)
        dtype = self.transformer.dtype
        negative: dict[str, Any] = {}
        if cfg > 1:
            neg = text(prompt.negative_prompt)
            negative = {
                "negative_prompt_embeds": neg.t5.to(dtype),
                "negative_prompt_attention_mask": neg.mask,
            }
        return pipe(
            prompt_embeds=positive.t5.to(dtype),
            prompt_attention_mask=positive.mask,
            width=prompt.width,
            height=prompt.height,
            num_inference_steps=prompt.steps,
            guidance_scale=cfg,
            generator=generator,
            max_sequence_length=max_tokens,
            output_type="pil",
            **negative,
        ).images[0]


def load_chroma_pipeline(resolved: ResolvedModel, dtype: torch.dtype = torch.float32) -> Any:
    """A Chroma diffusers folder (or cached hub snapshot), or its single file with ComfyUI's companions
    (worker/training/flux_single_file.py), offline: the VAE in float32, the rest in dtype."""
    from diffusers import ChromaPipeline

    if resolved.kind != "diffusers":  # Chroma1-HD.safetensors with ae.safetensors and t5xxl
        from worker.training.flux_single_file import load_chroma_single_file

        return load_chroma_single_file(resolved, dtype=dtype)
    try:
        return ChromaPipeline.from_pretrained(
            resolved.path, dtype={"default": dtype, "vae": torch.float32}, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load {shown(resolved.path, resolved.models_dir)}: {exc}"
        ) from exc
