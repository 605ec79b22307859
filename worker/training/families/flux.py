"""FLUX.1 dev and schnell: a rectified-flow transformer on packed 16-channel latents, T5-XXL + CLIP-L text.

As sd-scripts' flux_train_network.py trains it: latents shifted and scaled by the VAE's own shift_factor /
scaling_factor and packed in 2x2 patches with their position ids, x_t = (1 - sigma) x0 + sigma noise with
sigma drawn by timestep_sampling (worker/training/flow_matching.py), the velocity noise - x0 as the target,
dev's guidance embedding fed a constant guidance_scale (1.0 by default), schnell none. LoRA on every Linear
of the double and single blocks (worker/training/flux_names.py: sd-scripts' targets and key names, split
q/k/v fused on export); CLIP-L gets a LoRA only with network_train_unet_only false; T5 stays frozen.

Captions do not change during a run (unless shuffled or dropped per step), so the text encoders run once per
caption, and once per sample prompt, before training; then they leave memory (T5-XXL is about 9.5 GB in
bf16). With per-step captions or a CLIP-L LoRA they stay and encode each batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image

from shared.config.family_options import family_conflicts
from shared.config.previews import FLUX_GUIDANCE, FLUX_SAMPLER
from shared.config.sample_prompts import SamplePrompt
from shared.config.spec import TrainingConfig
from worker.training import base_quantization, data, export, flow_matching, flux_names, network, sampling
from worker.training.captions import CaptionOptions, with_affixes
from worker.training.errors import TrainingSetupError
from worker.training.families.base import WEIGHT_DTYPES, NetworkParams
from worker.training.model_loading import BaseModelError, ResolvedModel, shown

CLIP_MAX_LENGTH = 77
DEV_T5_TOKENS, SCHNELL_T5_TOKENS = 512, 256  # sd-scripts' t5xxl_max_token_length defaults
DEFAULT_GUIDANCE = 1.0  # training guidance for dev (sd-scripts' docs, ai-toolkit, SimpleTuner, OneTrainer)
# sd-scripts' --g default when drawing samples, and the model's own flow-matching Euler scheduler: one value
# for training samples and previews (shared/config/previews.py)
DEFAULT_SAMPLE_GUIDANCE, SAMPLER = FLUX_GUIDANCE, FLUX_SAMPLER
ENCODE_CHUNK = 8


def check_config(config: TrainingConfig) -> None:
    """Fields that mean nothing for FLUX are a 422 naming the field (also when model_family was "auto")."""
    conflicts = family_conflicts(config, "flux1")
    if conflicts:
        field, why = conflicts[0]
        raise TrainingSetupError(f"{field} {why}", details={"field": field})


FLUX_TIMESTEPS = flow_matching.TimestepSampling()  # sd-scripts' recommended FLUX.1 settings


def timestep_options(
    config: TrainingConfig, defaults: flow_matching.TimestepSampling = FLUX_TIMESTEPS
) -> flow_matching.TimestepSampling:
    """The config's timestep sampling, each unset field from `defaults` (the family's)."""
    return flow_matching.TimestepSampling(
        method=config.timestep_sampling or defaults.method,
        sigmoid_scale=config.sigmoid_scale or defaults.sigmoid_scale,
        discrete_flow_shift=config.discrete_flow_shift or defaults.discrete_flow_shift,
        weighting_scheme=config.weighting_scheme or defaults.weighting_scheme,
        logit_mean=config.logit_mean if config.logit_mean is not None else defaults.logit_mean,
        logit_std=config.logit_std or defaults.logit_std,
        mode_scale=config.mode_scale if config.mode_scale is not None else defaults.mode_scale,
    )


def trains_clip(config: TrainingConfig) -> bool:
    """CLIP-L gets a LoRA only when asked (sd-scripts advises network_train_unet_only for FLUX)."""
    return config.network_train_unet_only is False and config.text_encoder_lr > 0


# --- packing ------------------------------------------------------------------------------------------------


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: 2x2 patches as FLUX's transformer reads them."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of pack for latents of height x width."""
    b, _, channels = packed.shape
    patches = packed.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """[H/2 * W/2, 3] position ids of the packed patches: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] = torch.arange(height // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


# --- text ---------------------------------------------------------------------------------------------------


@dataclass
class TextConditioning:
    t5: torch.Tensor  # [N, L, D] T5 hidden states (padding zeroed with apply_t5_attn_mask)
    pooled: torch.Tensor | None  # [N, D_clip] CLIP-L pooled output (Chroma: none)
    mask: torch.Tensor | None  # [N, L] T5 attention mask, with apply_t5_attn_mask (Chroma: always)


def encode_captions(
    pipe: Any, captions: Sequence[str], *, max_tokens: int, t5_mask: bool, device: torch.device
) -> TextConditioning:
    """CLIP-L's pooled output and T5's hidden states for each caption (gradients flow into a CLIP LoRA)."""
    clip_ids = pipe.tokenizer(
        list(captions),
        padding="max_length",
        max_length=CLIP_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    pooled = pipe.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    t5_tokens = pipe.tokenizer_2(
        list(captions), padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():  # T5 is frozen
        t5 = pipe.text_encoder_2(t5_tokens.input_ids.to(device), output_hidden_states=False)[0]
    mask = t5_tokens.attention_mask.to(device) if t5_mask else None
    if mask is not None:  # sd-scripts' apply_t5_attn_mask: padding contributes nothing
        t5 = t5 * mask.unsqueeze(-1).to(t5.dtype)
    return TextConditioning(t5=t5, pooled=pooled, mask=mask)


def _encode_all(
    encode: Callable[..., TextConditioning], captions: Sequence[str], **kw: Any
) -> TextConditioning:
    """`encode` (a family's encode_text) over the captions in chunks of ENCODE_CHUNK, concatenated."""
    parts = [encode(captions[i : i + ENCODE_CHUNK], **kw) for i in range(0, len(captions), 8)]
    masks = [p.mask for p in parts if p.mask is not None]
    pooled = [p.pooled for p in parts if p.pooled is not None]
    return TextConditioning(
        t5=torch.cat([p.t5 for p in parts]),
        pooled=torch.cat(pooled) if pooled else None,
        mask=torch.cat(masks) if masks else None,
    )


# --- the model ----------------------------------------------------------------------------------------------


@dataclass
class FluxBatches:
    latents: data.BucketLatents
    item_row: torch.Tensor
    loss_weights: torch.Tensor
    epoch_items: data.SampleOrder
    text: TextConditioning | None  # per item, when captions are fixed and CLIP-L is frozen
    captions: tuple[str, ...] | None  # per item, when fixed but encoded per step (a CLIP-L LoRA trains)
    masks: list[torch.Tensor] | None = None


class FluxModel:
    """A loaded FLUX.1 base model for one run (worker/training/families/base.py)."""

    family = "flux1"
    family_label = "FLUX.1"  # in messages
    v_parameterization = False
    lycoris = None
    timestep_defaults = FLUX_TIMESTEPS

    def __init__(self, pipe: Any):
        self.pipeline = pipe
        self.variant = "dev" if pipe.transformer.config.guidance_embeds else "schnell"
        self.sample_text: dict[str, TextConditioning] = {}  # prompt -> conditioning, when encoders left
        self.device = torch.device("cpu")  # the run's device: add_network sets it

    @classmethod
    def load(cls, resolved: ResolvedModel, family: str, config: TrainingConfig) -> FluxModel:
        check_config(config)
        # Frozen weights load straight in the training dtype: FLUX.1 in float32 is 48 GB of RAM (the SD
        # families load float32 and cast; at their size it does not matter). The VAE stays float32.
        return cls(load_flux_pipeline(resolved, dtype=WEIGHT_DTYPES[config.mixed_precision]))

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def max_tokens(self, config: TrainingConfig) -> int:
        default = DEV_T5_TOKENS if self.variant == "dev" else SCHNELL_T5_TOKENS
        return config.t5xxl_max_token_length or default

    def encode_text(
        self, captions: Sequence[str], *, max_tokens: int, t5_mask: bool, device: torch.device
    ) -> TextConditioning:
        return encode_captions(self.pipeline, captions, max_tokens=max_tokens, t5_mask=t5_mask, device=device)

    def denoise(
        self,
        packed: torch.Tensor,
        text: TextConditioning,
        sigmas: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: float | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The transformer's packed velocity for packed noisy latents (inside the run's autocast)."""
        n, seq_len, _ = packed.shape
        device = packed.device
        kwargs = None
        if text.mask is not None:  # padding hidden from the joint attention too (text tokens come first)
            image_mask = torch.ones(n, seq_len, device=device, dtype=text.mask.dtype)
            joint = torch.cat([text.mask, image_mask], dim=1)
            kwargs = {"attention_mask": joint.bool()[:, None, None, :]}
        guidance_vec = None
        if guidance is not None:
            guidance_vec = torch.full((n,), guidance, device=device, dtype=dtype)
        assert text.pooled is not None
        return self.transformer(
            hidden_states=packed.to(dtype),
            encoder_hidden_states=text.t5.to(dtype),
            pooled_projections=text.pooled.to(dtype),
            timestep=sigmas.to(dtype),
            img_ids=img_ids.to(dtype),
            txt_ids=torch.zeros(text.t5.shape[1], 3, device=device, dtype=dtype),
            guidance=guidance_vec,
            joint_attention_kwargs=kwargs,
            return_dict=False,
        )[0]

    def trains_text_encoder(self, config: TrainingConfig) -> bool:
        """Whether CLIP-L gets a LoRA (Chroma, which has none, says never)."""
        return trains_clip(config)

    def add_network(self, config: TrainingConfig, seed: int, device: torch.device) -> NetworkParams:
        pipe = self.pipeline
        encoders = (pipe.text_encoder, getattr(pipe, "text_encoder_2", None))  # Chroma: T5 alone
        for model in (pipe.transformer, pipe.vae, *encoders):
            if model is not None:
                model.requires_grad_(False)
        torch.manual_seed(seed)  # the LoRA init draws from the global RNG
        targets = flux_names.flux_lora_target_paths(
            pipe.transformer,
            train_double_block_indices=config.train_double_block_indices,
            train_single_block_indices=config.train_single_block_indices,
            include_patterns=config.include_patterns,
            exclude_patterns=config.exclude_patterns,
        )
        if not targets:
            raise TrainingSetupError(
                "the block indices and patterns leave no module to train",
                details={"field": "train_double_block_indices"},
            )
        weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
        base_quantization.quantize_frozen(pipe.transformer, base_quantization.mode_of(config), weight_dtype)
        pipe.transformer.add_adapter(
            network.lora_config(config.network_dim, config.network_alpha, targets),
            adapter_name=network.ADAPTER_NAME,
        )
        denoiser = network.trainable_parameters(pipe.transformer)
        te_params: list[torch.nn.Parameter] = []
        if self.trains_text_encoder(config):
            te_params = network.add_text_encoder_lora(
                pipe.text_encoder, rank=config.network_dim, alpha=config.network_alpha, target="all_linear"
            )
        self._place_text_encoders(config, device, weight_dtype)
        pipe.vae.to(device, **({"dtype": torch.float32} if pipe.vae.dtype != torch.float32 else {}))
        # The transformer is cast here but reaches the device only in prepare_batches, once the captions are
        # encoded and the encoders left (as sd-scripts orders it): FLUX.1's 11.9 B and T5-XXL's 4.8 B
        # parameters are never on the card together. .to() keeps the Parameter objects the optimizer holds.
        base_quantization.place(pipe.transformer, torch.device("cpu"), weight_dtype)
        self.device = device
        for p in (*denoiser, *te_params):
            p.data = p.data.float()
        if config.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return NetworkParams(denoiser=denoiser, text_encoder=te_params, weight_dtype=weight_dtype)

    def _place_text_encoders(self, config: TrainingConfig, device: torch.device, dtype: torch.dtype) -> None:
        """CLIP-L and T5-XXL on the device in the training dtype; T5, always frozen (4.8 B parameters, about
        9.5 GB in bf16), stored as the base weights are (base_quantization)."""
        pipe = self.pipeline
        base_quantization.quantize_frozen(pipe.text_encoder_2, base_quantization.mode_of(config), dtype)
        base_quantization.place(pipe.text_encoder, device, dtype)
        base_quantization.place(pipe.text_encoder_2, device, dtype)

    def _transformer_to_device(self) -> None:
        """The transformer joins the card once the text encoders have done their part (add_network)."""
        base_quantization.place(self.transformer, self.device, self.transformer.dtype)

    def load_network_weights(self, path: Path, config: TrainingConfig) -> None:
        # sd-scripts' FLUX.1 and Chroma files fuse q/k/v (flux_names); reading one back into PEFT's split
        # layers is not written yet (the API refuses it at submission too)
        raise TrainingSetupError(
            f"network_weights is not supported for {self.family_label} runs yet",
            details={"field": "config.network_weights"},
        )

    def prepare_batches(
        self,
        table: data.SampleTable,
        dataset_dir: Path,
        config: TrainingConfig,
        seed: int,
        accelerator: Accelerator,
        image_sizes: Mapping[str, tuple[int, int]],
        cache_dir: Path,
    ) -> FluxBatches:
        pipe, device = self.pipeline, accelerator.device
        # latents are (x - shift_factor) * scaling_factor, float32
        images = data.cache_images(pipe.vae, table, dataset_dir, config, seed, image_sizes, cache_dir)
        latents, masks = images.latents, images.masks
        caption_options = CaptionOptions.from_config(config)
        varies = caption_options.varies
        text = None
        encode = {"max_tokens": self.max_tokens(config), "t5_mask": bool(config.apply_t5_attn_mask)}
        captions = tuple(with_affixes(c, caption_options) for c in table.captions)
        if not varies and not trains_clip(config):
            with torch.no_grad(), accelerator.autocast():
                text = _encode_all(self.encode_text, captions, device=device, **encode)
                prompts = sorted(self.sample_texts(config))
                if prompts:
                    encoded = _encode_all(self.encode_text, prompts, device=device, **encode)
                    self.sample_text = {prompt: _row(encoded, i) for i, prompt in enumerate(prompts)}
            self._release_text_encoders()
        self._transformer_to_device()
        item_bucket = tuple(latents.image_bucket[i] for i in table.item_image)
        return FluxBatches(
            latents=latents,
            item_row=torch.tensor([latents.image_row[i] for i in table.item_image], device=device),
            loss_weights=table.loss_weights(config.prior_loss_weight).to(device),
            epoch_items=data.SampleOrder(
                epoch_items=table.epoch_items,
                item_bucket=item_bucket,
                flip_aug=config.flip_aug,
                captions=table.captions if varies else None,
                caption_options=caption_options if varies else None,
            ),
            text=text,
            captions=captions if text is None and not varies else None,
            masks=masks,
        )

    def _release_text_encoders(self) -> None:
        """Every caption and sample prompt is encoded: the encoders are not needed again in this run."""
        pipe = self.pipeline
        pipe.register_modules(text_encoder=None, text_encoder_2=None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loss_fn(
        self,
        batches: FluxBatches,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
        config: TrainingConfig,
    ) -> FlowLoss:
        return FlowLoss(self, batches, accelerator, weight_dtype, seed, config)

    def trainable_models(self) -> dict[str, torch.nn.Module | None]:
        return {"transformer": self.transformer, "text_encoder": self.pipeline.text_encoder}

    def set_train(self, training: bool, *, train_text_encoder: bool) -> None:
        self.transformer.train(training)
        if self.pipeline.text_encoder is not None:
            self.pipeline.text_encoder.train(training and train_text_encoder)

    def metadata(self, config: TrainingConfig) -> dict[str, str]:
        """The ss_* fields sd-scripts' flux_train_network.py adds, and its modelspec architecture."""
        options = timestep_options(config, self.timestep_defaults)
        guidance = config.guidance_scale if config.guidance_scale is not None else DEFAULT_GUIDANCE
        return {
            "ss_base_model_version": "flux1",
            "ss_v2": "False",
            "ss_guidance_scale": str(guidance),
            "ss_timestep_sampling": options.method,
            "ss_sigmoid_scale": str(options.sigmoid_scale),
            "ss_model_prediction_type": config.model_prediction_type or "raw",
            "ss_discrete_flow_shift": str(options.discrete_flow_shift),
            "ss_weighting_scheme": options.weighting_scheme,
            "ss_apply_t5_attn_mask": str(bool(config.apply_t5_attn_mask)),
            "ss_t5xxl_max_token_length": str(self.max_tokens(config)),
            "ss_network_train_unet_only": str(not trains_clip(config)),
            "ss_text_encoder_lr": str(config.text_encoder_lr if trains_clip(config) else 0.0),
            "modelspec.architecture": f"flux-1-{self.variant}/lora",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux",
            "modelspec.prediction_type": "flow",
        }

    def save(self, path: Path, config: TrainingConfig, metadata: dict[str, str]) -> None:
        tensors = flux_names.kohya_flux_state_dict(
            self.transformer,
            self.pipeline.text_encoder if trains_clip(config) else None,
            network_alpha=config.network_alpha,
            save_dtype=export.SAVE_DTYPES[config.save_precision],
        )
        export.write_atomically(path, safetensors.torch.save(tensors, metadata))

    def sample(
        self,
        config: TrainingConfig,
        out_dir: Path,
        accelerator: Accelerator,
        seed: int,
        *,
        epoch: int,
        step: int,
        by_epoch: bool,
        on_sample: Callable[[Any], None],
    ) -> None:
        encode = {"max_tokens": self.max_tokens(config), "t5_mask": bool(config.apply_t5_attn_mask)}
        sampling.generate_samples(
            self.pipeline,
            [self.sample_prompt(p) for p in self.sample_prompts(config)],
            out_dir / "sample",
            output_name=config.output_name,
            epoch=epoch,
            step=step,
            by_epoch=by_epoch,
            default_sampler=SAMPLER,
            run_seed=seed,
            autocast=accelerator.autocast,
            on_sample=on_sample,
            extra_parameters={"Model": config.base_model, "LoRA": config.output_name},
            draw=lambda prompt, generator: self.draw(prompt, generator, **encode),
        )

    def sample_prompts(self, config: TrainingConfig) -> list[SamplePrompt]:
        return sampling.prompts_of(config)

    def sample_texts(self, config: TrainingConfig) -> set[str]:
        """What is encoded for samples before the text encoders leave memory."""
        return {p.prompt for p in self.sample_prompts(config)}

    def sample_prompt(self, prompt: SamplePrompt) -> SamplePrompt:
        return flux_prompt(prompt)

    def draw(
        self, prompt: SamplePrompt, generator: torch.Generator, *, max_tokens: int, t5_mask: bool
    ) -> Image.Image:
        """One image for a Kohya prompt line: --g sets dev's guidance (3.5 unless given), --w/--h/--s/--d as
        for SD; --n and --l are not used (FLUX.1 is guidance-distilled, as sd-scripts' samples treat it)."""
        pipe = self.pipeline
        text = self.sample_text.get(prompt.prompt)
        if text is None:
            text = encode_captions(
                pipe, [prompt.prompt], max_tokens=max_tokens, t5_mask=t5_mask, device=pipe.transformer.device
            )
        guidance = prompt.guidance_scale if prompt.guidance_scale is not None else DEFAULT_SAMPLE_GUIDANCE
        if self.variant == "schnell":
            guidance = 0.0  # no guidance embedding: the pipeline ignores it
        dtype = self.transformer.dtype
        return pipe(
            prompt_embeds=text.t5.to(dtype),
            pooled_prompt_embeds=text.pooled.to(dtype),
            width=prompt.width,
            height=prompt.height,
            num_inference_steps=prompt.steps,
            guidance_scale=guidance,
            generator=generator,
            max_sequence_length=max_tokens,
            output_type="pil",
        ).images[0]


def flux_prompt(prompt: SamplePrompt) -> SamplePrompt:
    """The prompt as FLUX draws it, so the PNG's parameters and the sample's meta say what was used: the
    distilled guidance (--g, 3.5 unless given), no classifier-free guidance (CFG scale 1), no negative
    prompt, and the model's own Euler scheduler whatever --ss said."""
    guidance = prompt.guidance_scale if prompt.guidance_scale is not None else DEFAULT_SAMPLE_GUIDANCE
    update = {"guidance_scale": guidance, "cfg_scale": 1.0, "negative_prompt": "", "sampler": SAMPLER}
    return prompt.model_copy(update=update)


def _row(text: TextConditioning, i: int) -> TextConditioning:
    return TextConditioning(
        t5=text.t5[i : i + 1],
        pooled=text.pooled[i : i + 1] if text.pooled is not None else None,
        mask=text.mask[i : i + 1] if text.mask is not None else None,
    )


class FlowLoss:
    """One micro-batch's rectified-flow loss: gathers cached rows, draws noise and sigmas, runs the family's
    transformer (FluxModel.denoise)."""

    def __init__(
        self,
        model: FluxModel,
        batches: FluxBatches,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
        config: TrainingConfig,
    ):
        self.model, self.batches, self.config = model, batches, config
        self.accelerator, self.weight_dtype = accelerator, weight_dtype
        self.generator = torch.Generator(accelerator.device).manual_seed(seed)
        self.options = timestep_options(config, model.timestep_defaults)
        self.guidance = None
        if model.variant == "dev":
            self.guidance = config.guidance_scale if config.guidance_scale is not None else DEFAULT_GUIDANCE
        self.encode = {"max_tokens": model.max_tokens(config), "t5_mask": bool(config.apply_t5_attn_mask)}

    def _text(self, batch: data.Batch, items: torch.Tensor) -> TextConditioning:
        b = self.batches
        if b.text is not None:
            mask = b.text.mask[items] if b.text.mask is not None else None
            pooled = b.text.pooled[items] if b.text.pooled is not None else None
            return TextConditioning(t5=b.text.t5[items], pooled=pooled, mask=mask)
        if batch.captions is not None:  # Kohya's shuffle/dropout options: this step's captions
            captions = list(batch.captions)
        else:
            assert b.captions is not None
            captions = [b.captions[i] for i in items.tolist()]
        return self.model.encode_text(captions, device=items.device, **self.encode)

    def __call__(self, batch: data.Batch) -> torch.Tensor:
        b = self.batches
        items = batch.items.to(b.item_row.device, non_blocking=True)
        flipped = batch.flipped.to(items.device, non_blocking=True) if batch.flipped is not None else None
        latents = b.latents.rows(batch.bucket, b.item_row[items], flipped)
        gen, device = self.generator, latents.device
        n, _, height, width = latents.shape
        noise = torch.randn(latents.shape, generator=gen, device=device)
        seq_len = (height // 2) * (width // 2)
        sigmas = flow_matching.draw_sigmas(
            self.options, n, image_seq_len=seq_len, generator=gen, device=device
        )
        noisy, target = flow_matching.noisy_and_target(latents, noise, sigmas)
        with self.accelerator.autocast():
            text = self._text(batch, items)
            img_ids = image_ids(height, width, device)
            pred = self.model.denoise(pack(noisy), text, sigmas, img_ids, self.guidance, self.weight_dtype)
        per_element = F.mse_loss(unpack(pred.float(), height, width), target, reduction="none")
        if b.masks is not None:
            per_element = per_element * data.mask_rows(b.masks, batch.bucket, b.item_row[items], flipped)
        per_sample = per_element.mean(dim=(1, 2, 3))
        return (per_sample * b.loss_weights[items]).mean()


def load_flux_pipeline(resolved: ResolvedModel, dtype: torch.dtype = torch.float32) -> Any:
    """A FLUX.1 diffusers folder (or cached hub snapshot), or BFL's single file with its companions, offline:
    the VAE in float32, the rest in dtype (add_network places them on the device)."""
    from diffusers import FluxPipeline

    if resolved.kind != "diffusers":  # BFL's flux1-dev.safetensors with ComfyUI's companion files
        from worker.training.flux_single_file import load_flux_single_file

        return load_flux_single_file(resolved, dtype=dtype)
    try:
        return FluxPipeline.from_pretrained(
            resolved.path, dtype={"default": dtype, "vae": torch.float32}, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load {shown(resolved.path, resolved.models_dir)}: {exc}"
        ) from exc
