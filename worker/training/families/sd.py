"""SD1.x, SD2.x and SDXL: UNets trained with DDPM noise (epsilon or v targets), CLIP text encoders.

Kohya's loop on diffusers + PEFT: latents cached once, DDPM noise at uniform timesteps, per-sample MSE on
the noise (or v) target weighted per sample; Kohya-format files with diffusers UNet names (SD1.x/2.x) or
sd-scripts' SAI names (SDXL). Moved here from the engine unchanged (tests/worker/test_family_bytes.py keeps
the files' bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiffusionPipeline

from shared.config.buckets import sdxl_size_conditioning
from shared.config.spec import TrainingConfig
from worker.training import (
    base_quantization,
    conditioning,
    data,
    export,
    lycoris_network,
    network,
    network_weights,
    sampling,
    text,
)
from worker.training import noise as noise_options
from worker.training.captions import CaptionOptions, with_affixes
from worker.training.errors import TrainingSetupError
from worker.training.families.base import WEIGHT_DTYPES, NetworkParams
from worker.training.model_loading import ResolvedModel, load_pipeline
from worker.training.sampling import generate_samples


class SDModel:
    """A loaded SD1.x / SD2.x / SDXL base model for one run (worker/training/families/base.py)."""

    def __init__(self, pipe: DiffusionPipeline, family: str, v_parameterization: bool):
        self.pipeline, self.family, self.v_parameterization = pipe, family, v_parameterization
        self.lycoris: lycoris_network.LycorisNetwork | None = None

    @classmethod
    def load(cls, resolved: ResolvedModel, family: str, config: TrainingConfig) -> SDModel:
        pipe = load_pipeline(resolved, family, dtype=torch.float32)  # type: ignore[arg-type]
        text.check_options(config, family, pipe.text_encoder)
        return cls(pipe, family, _set_prediction_type(pipe, config.v_parameterization))

    def add_network(self, config: TrainingConfig, seed: int, device: torch.device) -> NetworkParams:
        unet_params, te_params, weight_dtype, self.lycoris = _add_network(self.pipeline, config, seed, device)
        return NetworkParams(denoiser=unet_params, text_encoder=te_params, weight_dtype=weight_dtype)

    def load_network_weights(self, path: Path, config: TrainingConfig) -> None:
        network_weights.load_into(path, *_network_tensors(self.pipeline, config, self.lycoris))

    def prepare_batches(
        self,
        table: data.SampleTable,
        dataset_dir: Path,
        config: TrainingConfig,
        seed: int,
        accelerator: Accelerator,
        image_sizes: Mapping[str, tuple[int, int]],
        cache_dir: Path,
    ) -> _Batches:
        return _prepare_batches(
            self.pipeline, table, dataset_dir, config, seed, accelerator, image_sizes, cache_dir
        )

    def loss_fn(
        self,
        batches: _Batches,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
        config: TrainingConfig,
    ) -> _LossFn:
        return _LossFn(self.pipeline, batches, accelerator, weight_dtype, seed, config=config)

    def trainable_models(self) -> dict[str, torch.nn.Module | None]:
        pipe = self.pipeline
        return {
            "unet": pipe.unet,
            "text_encoder": pipe.text_encoder,
            "text_encoder_2": getattr(pipe, "text_encoder_2", None),
            "lycoris": self.lycoris,  # LoHa/LoKr/DoRA: its modules hook into the models but are not theirs
        }

    def set_train(self, training: bool, *, train_text_encoder: bool) -> None:
        self.pipeline.unet.train(training)
        for te in _text_encoders(self.pipeline):
            te.train(training and train_text_encoder)
        if self.lycoris is not None:
            self.lycoris.train(training)

    def metadata(self, config: TrainingConfig) -> dict[str, str]:
        return {}  # training_metadata already writes SD's fields (worker/training/metadata.py)

    def save(self, path: Path, config: TrainingConfig, metadata: dict[str, str]) -> None:
        pipe, lycoris = self.pipeline, self.lycoris
        if lycoris is not None:  # LoHa / LoKr / DoRA: LyCORIS' keys, ss_network_module lycoris.kohya
            lycoris_network.save_lycoris(
                lycoris,
                path,
                settings=lycoris_network.LycorisSettings.from_config(config),
                save_dtype=export.SAVE_DTYPES[config.save_precision],
                metadata=metadata,
            )
            return
        train_te = config.trains_text_encoder
        export.save_kohya_lora(
            pipe.unet,
            pipe.text_encoder if train_te else None,
            path,
            text_encoder_2=getattr(pipe, "text_encoder_2", None) if train_te else None,
            network_alpha=config.network_alpha,
            # Kohya's conv_alpha default: 1
            conv_alpha=(config.conv_alpha or 1.0) if config.conv_dim else None,
            save_dtype=export.SAVE_DTYPES[config.save_precision],
            metadata=metadata,
        )

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
        generate_samples(
            self.pipeline,
            sampling.prompts_of(config),
            out_dir / "sample",
            output_name=config.output_name,
            epoch=epoch,
            step=step,
            by_epoch=by_epoch,
            default_sampler=config.sample_sampler,
            run_seed=seed,
            autocast=accelerator.autocast,
            on_sample=on_sample,
            extra_parameters={"Model": config.base_model, "LoRA": config.output_name},
        )


# --- the step (moved from the engine) -----------------------------------------------------------------------


class NoiseSchedule:
    """DDPM forward process as precomputed per-timestep factors on the device (two gathers per step)."""

    def __init__(self, scheduler: DDPMScheduler, device: torch.device):
        alphas_cumprod = scheduler.alphas_cumprod.to(device, torch.float32)
        self.sqrt_alpha = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alpha = (1.0 - alphas_cumprod).sqrt()
        self.num_timesteps = scheduler.config.num_train_timesteps
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise TrainingSetupError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")

    def noisy_and_target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alpha[timesteps].view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        return noisy, (a * noise - s * latents if self.v_prediction else noise)


@dataclass
class _Batches:
    """Per-item tensors on the device; a batch (data.Batch) holds item indices of one bucket."""

    latents: data.BucketLatents  # per aspect-ratio bucket, float32
    item_row: torch.Tensor  # item -> row in its bucket's latents
    input_ids: torch.Tensor | None  # per item; None when captions change per step (each batch has its own)
    loss_weights: torch.Tensor  # per item
    cond: torch.Tensor | None  # per item text-encoder output, when the text encoder is frozen
    epoch_items: data.SampleOrder  # what data.epoch_batches cuts each epoch from
    pooled: torch.Tensor | None = None  # SDXL: per item pooled text embeds, when the encoders are frozen
    time_ids: torch.Tensor | None = None  # SDXL: per item (orig h, w, crop top, left, target h, w), float32
    time_ids_flipped: torch.Tensor | None = None  # SDXL with flip_aug: the same for the mirrored image
    masks: list[torch.Tensor] | None = None  # masked_loss/alpha_mask: per bucket [n, 1, h, w] loss weights


def _encode_text(
    text_encoder: torch.nn.Module, input_ids: torch.Tensor, clip_skip: int | None = None
) -> torch.Tensor:
    # clip_skip and max_token_length windows ([N, n, 77] ids) as Kohya encodes them: worker/training/text.py
    return text.encode(text_encoder, input_ids, clip_skip)


def _encode_prompt(
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module | None,
    input_ids: torch.Tensor,
    clip_skip: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(UNet encoder hidden states, SDXL pooled embeds or None) for token ids from _tokenize_all."""
    if text_encoder_2 is None:
        return _encode_text(text_encoder, input_ids, clip_skip), None
    return conditioning.encode_sdxl(text_encoder, text_encoder_2, input_ids)


def _tokenize(tokenizer, captions: tuple[str, ...], max_token_length: int | None = None) -> torch.Tensor:
    return text.tokenize(tokenizer, captions, max_token_length)  # [N, 77], or [N, n, 77] windows


def _tokenize_all(
    pipe: DiffusionPipeline, captions: tuple[str, ...], max_token_length: int | None = None
) -> torch.Tensor:
    """[N, 77] ids (one tokenizer), [N, 2, 77] for SDXL's two, with an extra window axis before the 77 when
    max_token_length is 150/225: one index gathers a batch either way."""
    tokenizer_2 = getattr(pipe, "tokenizer_2", None)
    if tokenizer_2 is None:
        return _tokenize(pipe.tokenizer, captions, max_token_length)
    # [N, 2, 77], or [N, 2, n, 77] with max_token_length windows
    return torch.stack(
        [
            _tokenize(pipe.tokenizer, captions, max_token_length),
            _tokenize(tokenizer_2, captions, max_token_length),
        ],
        dim=1,
    )


class _LossFn:
    """One micro-batch's loss: gathers cached rows, draws noise and timesteps, runs the UNet."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        batches: _Batches,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
        config: TrainingConfig | None = None,
    ):
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)  # SDXL
        self.batches, self.accelerator, self.weight_dtype = batches, accelerator, weight_dtype
        self.schedule = NoiseSchedule(DDPMScheduler.from_config(pipe.scheduler.config), accelerator.device)
        self.generator = torch.Generator(accelerator.device).manual_seed(seed)
        max_token_length = config.max_token_length if config is not None else None
        self.tokenize = functools.partial(_tokenize_all, pipe, max_token_length=max_token_length)
        # Kohya's clip_skip, noise_offset / adaptive_noise_scale and min_snr_gamma (None: off)
        self.clip_skip = config.clip_skip if config is not None else None
        self.noise_offset = config.noise_offset if config is not None else None
        self.adaptive_noise_scale = config.adaptive_noise_scale if config is not None else None
        self.min_snr_gamma = config.min_snr_gamma if config is not None else None
        if self.min_snr_gamma is not None:
            alphas_cumprod = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
            self.all_snr = noise_options.snr_table(alphas_cumprod).to(accelerator.device)

    def _input_ids(self, batch: data.Batch, items: torch.Tensor) -> torch.Tensor:
        if batch.captions is not None:  # Kohya's shuffle/dropout options: this step's captions, tokenised now
            return self.tokenize(batch.captions).to(items.device)
        assert self.batches.input_ids is not None
        return self.batches.input_ids[items]

    def _time_ids(self, items: torch.Tensor, flipped: torch.Tensor | None) -> torch.Tensor:
        b = self.batches
        assert b.time_ids is not None
        if flipped is None or b.time_ids_flipped is None:
            return b.time_ids[items]
        return torch.where(flipped.view(-1, 1), b.time_ids_flipped[items], b.time_ids[items])

    def __call__(self, batch: data.Batch) -> torch.Tensor:
        b = self.batches
        items = batch.items.to(b.item_row.device, non_blocking=True)
        flipped = batch.flipped.to(items.device, non_blocking=True) if batch.flipped is not None else None
        latents = b.latents.rows(batch.bucket, b.item_row[items], flipped)
        gen, device = self.generator, latents.device
        noise = torch.randn(latents.shape, generator=gen, device=device)
        if self.noise_offset:  # drawn after the noise, before the timesteps, as Kohya draws them
            noise = noise_options.offset_noise(
                latents, noise, self.noise_offset, self.adaptive_noise_scale, generator=gen
            )
        steps = self.schedule.num_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=gen, device=device)
        noisy, target = self.schedule.noisy_and_target(latents, noise, timesteps)
        with self.accelerator.autocast():
            if b.cond is not None:
                hidden = b.cond[items]
                pooled = b.pooled[items] if b.pooled is not None else None
            else:
                input_ids = self._input_ids(batch, items)
                hidden, pooled = _encode_prompt(
                    self.text_encoder, self.text_encoder_2, input_ids, clip_skip=self.clip_skip
                )
            added = None
            if b.time_ids is not None:  # SDXL's "text_time" conditioning
                added = {"text_embeds": pooled, "time_ids": self._time_ids(items, flipped)}
            pred = self.unet(
                noisy.to(self.weight_dtype), timesteps, hidden, added_cond_kwargs=added, return_dict=False
            )[0]
        # Kohya: float32 MSE, mean per sample, times the sample's weight (prior_loss_weight for reg), mean.
        per_element = F.mse_loss(pred.float(), target, reduction="none")
        if b.masks is not None:  # sd-scripts' apply_masked_loss: weights before the mean over all elements
            per_element = per_element * data.mask_rows(b.masks, batch.bucket, b.item_row[items], flipped)
        per_sample = per_element.mean(dim=(1, 2, 3))
        if self.min_snr_gamma is not None:  # Kohya's apply_snr_weight, after the sample weights
            per_sample = per_sample * noise_options.min_snr_weight(
                timesteps, self.all_snr, self.min_snr_gamma, v_prediction=self.schedule.v_prediction
            )
        return (per_sample * b.loss_weights[items]).mean()


# --- the network and the cached batches ------------------------------------------------------------


def _add_lycoris(
    pipe: DiffusionPipeline, config: TrainingConfig
) -> tuple[lycoris_network.LycorisNetwork, list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """LoHa / LoKr / DoRA: LyCORIS modules on the same targets; (network, U-Net params, encoder params)."""
    net = lycoris_network.add_lycoris(
        pipe.unet,
        _text_encoders(pipe) if config.trains_text_encoder else [],  # SDXL: both encoders or neither
        lycoris_network.LycorisSettings.from_config(config),
        target=config.network_target,
    )
    unet_params, te_params = [], []
    for name, p in net.named_parameters():
        (unet_params if name.startswith(export.UNET_PREFIX) else te_params).append(p)
    return net, unet_params, te_params


def _add_network(
    pipe: DiffusionPipeline, config: TrainingConfig, seed: int, device: torch.device
) -> tuple[
    list[torch.nn.Parameter], list[torch.nn.Parameter], torch.dtype, lycoris_network.LycorisNetwork | None
]:
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)  # only the LoRA weights add_lora creates will train
    # fp8_base / base_quantization: the UNet's Linear layers stored quantized before the LoRA wraps them
    base_quantization.quantize_frozen(
        unet, base_quantization.mode_of(config), WEIGHT_DTYPES[config.mixed_precision]
    )
    torch.manual_seed(seed)  # the LoRA init draws from the global RNG
    lycoris: lycoris_network.LycorisNetwork | None = None
    if config.uses_lycoris:
        lycoris, unet_params, te_params = _add_lycoris(pipe, config)
    else:
        unet_params, te_params = network.add_lora(
            unet,
            text_encoder if config.trains_text_encoder else None,
            rank=config.network_dim,
            alpha=config.network_alpha,
            target=config.network_target,
            conv_rank=config.conv_dim,
            conv_alpha=config.conv_alpha,
        )
    text_encoders = [text_encoder]
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if text_encoder_2 is not None:  # SDXL: both encoders get LoRA (lora_te1_/lora_te2_) or neither does
        text_encoders.append(text_encoder_2)
        text_encoder_2.requires_grad_(False)
        if config.trains_text_encoder and lycoris is None:
            te2_params = network.add_text_encoder_lora(
                text_encoder_2,
                rank=config.network_dim,
                alpha=config.network_alpha,
                target=config.network_target,
            )
            te_params = [*te_params, *te2_params]
    # Frozen base weights in the compute dtype (as Kohya does), the VAE kept float32 (it runs once, and
    # SD1.5's VAE overflows in fp16); LoRA weights stay float32 for the optimizer and the grad scaler.
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    placements = [(unet, weight_dtype), *((te, weight_dtype) for te in text_encoders), (vae, torch.float32)]
    for model, dtype in placements:
        # dtype only when it changes: diffusers warns on every .to(dtype) of a model.
        base_quantization.place(model, device, dtype)
    if lycoris is not None:
        lycoris.to(device)  # not a child of the models it is hooked into: moved on its own, kept float32
    for p in (*unet_params, *te_params):
        p.data = p.data.float()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.trains_text_encoder:
            # Non-reentrant: the reentrant variant drops the gradients of LoRA weights behind frozen inputs.
            for te in text_encoders:
                te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return unet_params, te_params, weight_dtype, lycoris


def _network_tensors(
    pipe: DiffusionPipeline, config: TrainingConfig, lycoris: lycoris_network.LycorisNetwork | None
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(file key -> the live tensor save() writes under it, alpha key -> the network's alpha): the inverse of
    save(), for loading a file into the network."""
    if lycoris is not None:  # its state dict is the file (lycoris_network.state_dict)
        state = lycoris.state_dict(keep_vars=True)
        alphas = {k: float(v) for k, v in state.items() if k.endswith(".alpha")}
        return {k: v for k, v in state.items() if k not in alphas}, alphas
    train_te = config.trains_text_encoder
    targets: dict[str, torch.Tensor] = {}
    alphas = {}
    for key, layer in export.kohya_modules(
        pipe.unet,
        pipe.text_encoder if train_te else None,
        text_encoder_2=getattr(pipe, "text_encoder_2", None) if train_te else None,
    ):
        targets[f"{key}.lora_down.weight"] = layer.lora_A[network.ADAPTER_NAME].weight
        targets[f"{key}.lora_up.weight"] = layer.lora_B[network.ADAPTER_NAME].weight
        alphas[f"{key}.alpha"] = float(layer.lora_alpha[network.ADAPTER_NAME])
    return targets, alphas


def _prepare_batches(
    pipe: DiffusionPipeline,
    table: data.SampleTable,
    dataset_dir: Path,
    config: TrainingConfig,
    seed: int,
    accelerator: Accelerator,
    image_sizes: Mapping[str, tuple[int, int]],
    cache_dir: Path,
) -> _Batches:
    device = accelerator.device
    images = data.cache_images(pipe.vae, table, dataset_dir, config, seed, image_sizes, cache_dir)
    assignments, latents, masks = images.assignments, images.latents, images.masks
    caption_options = CaptionOptions.from_config(config)
    varies = caption_options.varies  # then each batch brings this step's captions, tokenised per step
    captions = tuple(with_affixes(c, caption_options) for c in table.captions)
    input_ids = None if varies else _tokenize_all(pipe, captions, config.max_token_length).to(device)
    cond = pooled = time_ids = time_ids_flipped = None
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if not config.trains_text_encoder and input_ids is not None:
        # A frozen text encoder gives each caption the same output every step: encode it once. Not when
        # captions change per step (Kohya refuses cache_text_encoder_outputs with shuffle/dropout).
        with torch.no_grad(), accelerator.autocast():
            cond, pooled = _encode_prompt(pipe.text_encoder, text_encoder_2, input_ids, config.clip_skip)
    if text_encoder_2 is not None:
        # SDXL size/crop conditioning per item, from its image size and bucket (Kohya's values).
        def item_time_ids(flipped: bool) -> torch.Tensor:
            paths = [table.image_paths[i] for i in table.item_image]
            parts = [
                sdxl_size_conditioning(image_sizes[p], assignments[p].bucket, flipped=flipped) for p in paths
            ]
            return conditioning.sdxl_time_ids(*zip(*parts, strict=True)).to(device)

        time_ids = item_time_ids(False)
        time_ids_flipped = item_time_ids(True) if config.flip_aug else None
    item_bucket = tuple(latents.image_bucket[i] for i in table.item_image)
    return _Batches(
        latents=latents,
        item_row=torch.tensor([latents.image_row[i] for i in table.item_image], device=device),
        input_ids=input_ids,
        loss_weights=table.loss_weights(config.prior_loss_weight).to(device),
        cond=cond,
        epoch_items=data.SampleOrder(
            epoch_items=table.epoch_items,
            item_bucket=item_bucket,
            flip_aug=config.flip_aug,
            captions=table.captions if varies else None,
            caption_options=caption_options if varies else None,
        ),
        pooled=pooled,
        time_ids=time_ids,
        time_ids_flipped=time_ids_flipped,
        masks=masks,
    )


def _text_encoders(pipe: DiffusionPipeline) -> list[torch.nn.Module]:
    """The pipeline's text encoders: one for SD1.x/2.x, two for SDXL."""
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def _set_prediction_type(pipe: DiffusionPipeline, v_parameterization: bool | None) -> bool:
    """Whether to train on v targets: the job's v_parameterization (Kohya's flag), else the base model's
    scheduler config. When the job overrides it, the pipeline's scheduler is switched too, so the returned
    pipeline samples the way it was trained."""
    from_config = pipe.scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    if v_parameterization is None or v_parameterization == from_config:
        return from_config
    prediction_type = "v_prediction" if v_parameterization else "epsilon"
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return v_parameterization
