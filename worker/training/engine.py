"""The training engine: one LoRA run from a config and a dataset folder, with no Celery or database.

Kohya's loop on diffusers + PEFT: latents cached once, DDPM noise at uniform timesteps, per-sample MSE on
the noise (or v) target weighted per sample, epochs x repeats counted as shared.config.plan counts them, a
Kohya-format file per saved epoch. Callers observe and steer it through EngineHooks.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, DiffusionPipeline

from shared.config.buckets import BucketSettings, assign_buckets, sdxl_size_conditioning
from shared.config.plan import TrainingPlan, compute_plan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import scan_dataset_dir
from worker.training import (
    checkpoints,
    conditioning,
    data,
    export,
    lycoris_network,
    network,
    optim,
    sampling,
    text,
)
from worker.training import noise as noise_options
from worker.training.captions import CaptionOptions, with_affixes
from worker.training.errors import TrainingSetupError
from worker.training.model_hashes import ModelHashes, base_model_hashes
from worker.training.model_loading import load_pipeline, resolve_base_model, resolve_family
from worker.training.sampling import SavedSample, generate_samples


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float | None
    steps_per_second: float | None
    eta_seconds: float | None


@dataclass(frozen=True)
class SavedLora:
    path: Path
    epoch: int
    step: int
    is_final: bool


class TrainingCanceled(Exception):
    """should_cancel() turned true; the files saved before it stay where they are."""

    def __init__(self, step: int, files: list[SavedLora]):
        super().__init__(f"training canceled before step {step + 1}")
        self.step = step
        self.files = files


def _noop(*_args: object) -> None:
    return None


@dataclass
class EngineHooks:
    on_stage: Callable[[str], None] = _noop  # "loading_model", "caching_latents", "training", "saving",
    # "sampling"
    on_progress: Callable[[Progress], None] = _noop  # after every optimizer step; the caller throttles
    on_saved: Callable[[SavedLora], None] = _noop  # right after a file is completely written
    on_sample: Callable[[SavedSample], None] = _noop  # right after each sample image is completely written
    on_removed: Callable[[SavedLora], None] = _noop  # a kept-last-N file was deleted (maybe saved earlier)
    # (resume state path, completed epochs, step) right after the state file is written; it is replaced by
    # the next one, so copy or upload it before returning
    on_state_saved: Callable[[Path, int, int], None] = _noop
    should_cancel: Callable[[], bool] = field(default=lambda: False)  # polled between optimizer steps


@dataclass
class TrainResult:
    files: list[SavedLora]
    seed: int
    plan: TrainingPlan
    final_loss: float | None
    pipeline: DiffusionPipeline  # the trained in-memory pipeline (SD/SDXL), adapters attached, in eval mode
    family: str = "sd1"  # the base model's family: "sd1", "sd2" or "sdxl"
    v_parameterization: bool = False  # trained on v targets (pipeline.scheduler says the same)
    lycoris: torch.nn.Module | None = None  # the LyCORIS network (LoHa/LoKr/DoRA), hooked into the pipeline


WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- setup checks (before any work) -------------------------------------------------------------------------


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TrainingSetupError(f"unknown device {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise TrainingSetupError(f"device {device!r} is not supported (use 'cpu' or 'cuda[:N]')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingSetupError(f"device {device!r} was asked for but this worker has no CUDA GPU")
    return dev


def check_precision(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision == "fp16" and device.type == "cpu":
        raise TrainingSetupError(
            "mixed_precision 'fp16' needs a CUDA GPU; on CPU use 'bf16' or 'no'",
            details={"field": "mixed_precision"},
        )
    # including_emulation=False: pre-Ampere GPUs "support" bf16 only as a slow emulation.
    bf16_native = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if mixed_precision == "bf16" and not bf16_native:
        raise TrainingSetupError(
            f"mixed_precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use 'fp16'",
            details={"field": "mixed_precision"},
        )


def make_accelerator(mixed_precision: str, device: torch.device) -> Accelerator:
    # Accelerate keeps its state in a process-wide singleton that refuses a different precision later; a
    # worker process runs many jobs, so start each run from a clean state.
    AcceleratorState._reset_state(reset_partial_state=True)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    # Gradient accumulation is done by the loop itself: groups must end at epoch boundaries
    # (plan.steps_per_epoch = ceil(batches / accumulation), as Kohya counts), which accelerate only knows for
    # its own dataloaders.
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")


# --- the step -----------------------------------------------------------------------------------------------


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


class _Rate:
    """Steps/s and ETA from the second step on: the first one pays warm-up (allocator, kernels, autotune)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.start: float | None = None
        self.start_step = 0

    def update(self, step: int) -> tuple[float | None, float | None]:
        now = time.perf_counter()
        if self.start is None:
            self.start, self.start_step = now, step
            return None, None
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        return rate, (self.total_steps - step) / rate


# --- the run ------------------------------------------------------------------------------------------------


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
        model.to(device, **({"dtype": dtype} if model.dtype != dtype else {}))
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
    assignments = assign_buckets(
        {p: image_sizes[p] for p in table.image_paths}, BucketSettings.from_config(config)
    )  # the same buckets compute_plan counted
    disk_cache = None
    if config.cache_latents_to_disk:
        disk_cache = data.LatentDiskCache(cache_dir, dataset_dir, data.vae_fingerprint(pipe.vae))
    latents = data.cache_latents(
        pipe.vae,
        dataset_dir,
        table.image_paths,
        assignments,
        generator=torch.Generator().manual_seed(seed),
        flip_aug=config.flip_aug,
        image_sizes=image_sizes,
        disk_cache=disk_cache,
    )  # kept float32: noise, noisy latents and targets are formed in fp32, only the UNet input is cast
    masks = None
    if config.uses_loss_masks:  # computed from the files each run: the latent cache does not depend on them
        mask_paths = {e.path: e.mask_path for s, e in table.items if config.masked_loss and not s.is_reg}
        masks = data.cache_loss_masks(
            dataset_dir, latents, table.image_paths, assignments, mask_paths, alpha=config.alpha_mask
        )
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


def train_lora(
    config: TrainingConfig,
    dataset_dir: Path,
    out_dir: Path,
    *,
    models_dir: Path,
    hooks: EngineHooks | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
    resume_from: Path | None = None,
    state_dir: Path | None = None,
    allow_download: bool = False,
    hash_cache: Path | None = None,
) -> TrainResult:
    """Train one LoRA; files land in out_dir as they are saved. Raises TrainingSetupError before any work
    for a config this worker cannot run, TrainingCanceled when hooks.should_cancel() turns true.
    cache_dir: where config.cache_latents_to_disk keeps latents (default: out_dir/.latent-cache).
    state_dir: write a resume state there with every saved file (hooks.on_state_saved announces it).
    resume_from: such a state of this same run: training continues after its step, as if never stopped.
    hash_cache: a JSON file (the worker's data dir) caching base-model hashes for ss_sd_model_hash across
    jobs (worker/training/model_hashes.py); without it they are cached for this process only."""
    hooks = hooks or EngineHooks()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    dev = resolve_device(device)
    check_precision(config.mixed_precision, dev)
    optim.check_optimizer_available(config)
    sampling.check_samplers_available(config)
    layout = scan_dataset_dir(
        dataset_dir,
        default_repeats=config.repeats,
        trigger=config.trigger_word,
        class_token=config.class_word,
        caption_extension=config.caption_extension,
    )
    image_sizes = data.read_image_sizes(dataset_dir, layout)  # upright, as the API probed them
    plan = compute_plan(layout, config, image_sizes)  # aspect-ratio buckets: the engine batches the same way
    resume_state = checkpoints.read_state(Path(resume_from)) if resume_from is not None else None
    if resume_state is not None:
        checkpoints.check_state(resume_state, config, plan)
        seed = int(resume_state["seed"])  # the run's seed, also when the config let it be chosen
    else:
        seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    resolved = resolve_base_model(config.base_model, models_dir, allow_download=allow_download)
    family = resolve_family(resolved, config.model_family)  # from config files / key names: no weights read
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(config.mixed_precision, dev)
    started_at = time.time()

    hooks.on_stage("loading_model")
    pipe = load_pipeline(resolved, family, dtype=torch.float32)
    base_hashes = _base_model_hashes(resolved.path, hash_cache)  # once per model file: cached (model_hashes)
    text.check_options(config, family, pipe.text_encoder)
    v_parameterization = _set_prediction_type(pipe, config.v_parameterization)
    unet_params, te_params, weight_dtype, lycoris = _add_network(pipe, config, seed, accelerator.device)
    optimizer = optim.build_optimizer(config, unet_params, te_params)
    lr_scheduler = optim.build_lr_scheduler(config, optimizer, plan.total_steps)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    hooks.on_stage("caching_latents")
    table = data.build_sample_table(layout, dataset_dir)
    batches = _prepare_batches(
        pipe,
        table,
        dataset_dir,
        config,
        seed,
        accelerator,
        image_sizes,
        Path(cache_dir) if cache_dir is not None else out_dir / ".latent-cache",
    )
    run_metadata = export.training_metadata(
        config,
        plan,
        seed=seed,
        optimizer=optim.optimizer_name(optimizer.optimizer, optim.optimizer_kwargs(config)),
        tag_freq=export.tag_frequency(
            (export.folder_name(subset, dataset_dir), caption)
            for (subset, _), caption in zip(table.items, table.captions, strict=True)
        ),
        dirs=export.dataset_dirs(layout, dataset_dir, reg=False),
        reg_dirs=export.dataset_dirs(layout, dataset_dir, reg=True),
        started_at=started_at,
        family=family,
        v_parameterization=v_parameterization,
        layout=layout,
        dataset_dir=dataset_dir,
        model_hashes=base_hashes,
    )

    hooks.on_stage("training")
    train_te = config.trains_text_encoder
    pipe.unet.train()
    for te in _text_encoders(pipe):
        te.train(train_te)
    if lycoris is not None:
        lycoris.train()
    loss_fn = _LossFn(pipe, batches, accelerator, weight_dtype, seed, config=config)
    params = [*unet_params, *te_params]
    accum = config.gradient_accumulation_steps
    rate = _Rate(plan.total_steps)
    run_metadata.update(export.option_metadata(config))
    ckpt = checkpoints.Checkpointer(
        config=config,
        plan=plan,
        seed=seed,
        out_dir=out_dir,
        hooks=hooks,
        save_file=lambda name, epoch, step, is_final: _save(
            pipe,
            config,
            out_dir,
            run_metadata,
            epoch=epoch,
            step=step,
            is_final=is_final,
            name=name,
            lycoris=lycoris,
        ),
        train_state=checkpoints.TrainState(
            models={
                "unet": pipe.unet,
                "text_encoder": pipe.text_encoder,
                "text_encoder_2": getattr(pipe, "text_encoder_2", None),
                "lycoris": lycoris,  # LoHa/LoKr/DoRA: its modules hook into the models but are not theirs
            },
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            noise_generator=loss_fn.generator,
            scaler=accelerator.scaler,
        ),
        state_dir=Path(state_dir) if state_dir is not None else None,
    )
    files = ckpt.files  # this call's saved files that are kept (keep-last-N removes from it)
    start = ckpt.resume(resume_state) if resume_state is not None else checkpoints.Position()
    step = start.step
    loss_value: float | None = ckpt.loss
    sample = functools.partial(_sample, pipe, config, out_dir, accelerator, seed, hooks, plan.total_steps)
    if config.sample_at_first and step == 0:
        sample(epoch=0, step=0, by_epoch=True)  # Kohya's --sample_at_first: before step 1, named e000000
    for epoch in range(start.epoch, plan.epochs + 1):
        epoch_batches = data.epoch_batches(
            batches.epoch_items, seed=seed, epoch=epoch, batch_size=config.batch_size
        )
        for first in range(start.batch if epoch == start.epoch else 0, len(epoch_batches), accum):
            if hooks.should_cancel():
                raise TrainingCanceled(step, files)
            group = epoch_batches[first : first + accum]
            loss_sum: torch.Tensor | None = None
            for items in group:
                loss = loss_fn(items)
                # Divided by the configured accumulation even for a short last group, as accelerate/Kohya do.
                accelerator.backward(loss / accum if accum > 1 else loss)
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = loss_sum.item() / len(group)  # the one host sync per step
            steps_per_second, eta = rate.update(step)
            hooks.on_progress(
                Progress(step, plan.total_steps, epoch, plan.epochs, loss_value, steps_per_second, eta)
            )
            if sampling.due_at_step(config, step):  # before the step's save, as Kohya does
                sample(epoch=epoch, step=step, by_epoch=False)
            ckpt.after_step(step=step, epoch=epoch, next_batch=first + accum, loss=loss_value)
        ckpt.after_epoch(step=step, epoch=epoch, loss=loss_value)  # the epoch's file, removals, state
        if sampling.due_at_epoch(config, epoch):  # after the epoch's save, as Kohya does
            sample(epoch=epoch, step=step, by_epoch=True)

    pipe.unet.eval()
    for te in _text_encoders(pipe):
        te.eval()
    if lycoris is not None:
        lycoris.eval()
    return TrainResult(
        files=files,
        seed=seed,
        plan=plan,
        final_loss=loss_value,
        pipeline=pipe,
        family=family,
        v_parameterization=v_parameterization,
        lycoris=lycoris,
    )


def _sample(
    pipe: DiffusionPipeline,
    config: TrainingConfig,
    out_dir: Path,
    accelerator: Accelerator,
    seed: int,
    hooks: EngineHooks,
    total_steps: int,
    *,
    epoch: int,
    step: int,
    by_epoch: bool,
) -> None:
    """One image per sample prompt from the in-memory pipeline into out_dir/sample (Kohya's folder)."""
    prompts = sampling.prompts_of(config)
    if not prompts:
        return
    hooks.on_stage("sampling")
    generate_samples(
        pipe,
        prompts,
        out_dir / "sample",
        output_name=config.output_name,
        epoch=epoch,
        step=step,
        by_epoch=by_epoch,
        default_sampler=config.sample_sampler,
        run_seed=seed,
        autocast=accelerator.autocast,
        on_sample=hooks.on_sample,
        extra_parameters={"Model": config.base_model, "LoRA": config.output_name},
    )
    if step < total_steps:
        hooks.on_stage("training")


def _text_encoders(pipe: DiffusionPipeline) -> list[torch.nn.Module]:
    """The pipeline's text encoders: one for SD1.x/2.x, two for SDXL."""
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def _base_model_hashes(path: Path, cache_file: Path | None) -> ModelHashes | None:
    """The base model's A1111 hashes for the metadata; an unreadable file leaves them out (the load that
    follows reports it) rather than failing here."""
    try:
        return base_model_hashes(path, cache_file)
    except OSError:
        return None


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


def _save(
    pipe: DiffusionPipeline,
    config: TrainingConfig,
    out_dir: Path,
    run_metadata: dict[str, str],
    *,
    epoch: int,
    step: int,
    is_final: bool,
    name: str | None = None,  # default: the epoch file's name
    lycoris: lycoris_network.LycorisNetwork | None = None,
) -> SavedLora:
    path = out_dir / (name or export.lora_file_name(config.output_name, epoch, is_final=is_final))
    metadata = export.file_metadata(run_metadata, epoch=epoch, step=step, finished_at=time.time())
    if lycoris is not None:  # LoHa / LoKr / DoRA: LyCORIS' keys, ss_network_module lycoris.kohya
        lycoris_network.save_lycoris(
            lycoris,
            path,
            settings=lycoris_network.LycorisSettings.from_config(config),
            save_dtype=export.SAVE_DTYPES[config.save_precision],
            metadata=metadata,
        )
        return SavedLora(path=path, epoch=epoch, step=step, is_final=is_final)
    train_te = config.trains_text_encoder
    export.save_kohya_lora(
        pipe.unet,
        pipe.text_encoder if train_te else None,
        path,
        text_encoder_2=getattr(pipe, "text_encoder_2", None) if train_te else None,
        network_alpha=config.network_alpha,
        conv_alpha=(config.conv_alpha or 1.0) if config.conv_dim else None,  # Kohya's conv_alpha default: 1
        save_dtype=export.SAVE_DTYPES[config.save_precision],
        metadata=metadata,
    )
    return SavedLora(path=path, epoch=epoch, step=step, is_final=is_final)
