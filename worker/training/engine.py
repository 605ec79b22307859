"""The training engine: one LoRA run from a config and a dataset folder, with no Celery or database.

Kohya's loop on diffusers + PEFT: latents cached once, DDPM noise at uniform timesteps, per-sample MSE on
the noise (or v) target weighted per sample, epochs x repeats counted as shared.plan counts them, a
Kohya-format file per saved epoch. Callers observe and steer it through EngineHooks.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, StableDiffusionPipeline

from shared.dataset_layout import scan_dataset_dir
from shared.plan import TrainingPlan, compute_plan
from shared.spec import TrainingConfig
from worker.training import data, export, network, optim
from worker.training.errors import TrainingSetupError
from worker.training.model_loading import load_sd15_pipeline, resolve_base_model


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
    on_stage: Callable[[str], None] = _noop  # "loading_model", "caching_latents", "training", "saving"
    on_progress: Callable[[Progress], None] = _noop  # after every optimizer step; the caller throttles
    on_saved: Callable[[SavedLora], None] = _noop  # right after a file is completely written
    should_cancel: Callable[[], bool] = field(default=lambda: False)  # polled between optimizer steps


@dataclass
class TrainResult:
    files: list[SavedLora]
    seed: int
    plan: TrainingPlan
    final_loss: float | None
    pipeline: StableDiffusionPipeline  # the trained in-memory pipeline, adapters attached, in eval mode


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
    """Per-item tensors on the device; a batch is a tensor of item indices."""

    latents: torch.Tensor  # per unique image, float32
    item_image: torch.Tensor  # item -> latent row
    input_ids: torch.Tensor  # per item
    loss_weights: torch.Tensor  # per item
    cond: torch.Tensor | None  # per item text-encoder output, when the text encoder is frozen
    epoch_items: torch.Tensor


def _encode_text(text_encoder: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids, return_dict=False)[0]


def _tokenize(tokenizer, captions: tuple[str, ...]) -> torch.Tensor:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class _LossFn:
    """One micro-batch's loss: gathers cached rows, draws noise and timesteps, runs the UNet."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        batches: _Batches,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
    ):
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.batches, self.accelerator, self.weight_dtype = batches, accelerator, weight_dtype
        self.schedule = NoiseSchedule(DDPMScheduler.from_config(pipe.scheduler.config), accelerator.device)
        self.generator = torch.Generator(accelerator.device).manual_seed(seed)

    def __call__(self, items: torch.Tensor) -> torch.Tensor:
        b = self.batches
        latents = b.latents[b.item_image[items]]
        gen, device = self.generator, latents.device
        noise = torch.randn(latents.shape, generator=gen, device=device)
        steps = self.schedule.num_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=gen, device=device)
        noisy, target = self.schedule.noisy_and_target(latents, noise, timesteps)
        with self.accelerator.autocast():
            if b.cond is not None:
                hidden = b.cond[items]
            else:
                hidden = _encode_text(self.text_encoder, b.input_ids[items])
            pred = self.unet(noisy.to(self.weight_dtype), timesteps, hidden, return_dict=False)[0]
        # Kohya: float32 MSE, mean per sample, times the sample's weight (prior_loss_weight for reg), mean.
        per_sample = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))
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


def _add_network(
    pipe: StableDiffusionPipeline, config: TrainingConfig, seed: int, device: torch.device
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter], torch.dtype]:
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)  # only the LoRA weights add_lora creates will train
    torch.manual_seed(seed)  # the LoRA init draws from the global RNG
    unet_params, te_params = network.add_lora(
        unet,
        text_encoder if config.trains_text_encoder else None,
        rank=config.network_dim,
        alpha=config.network_alpha,
    )
    # Frozen base weights in the compute dtype (as Kohya does), the VAE kept float32 (it runs once, and
    # SD1.5's VAE overflows in fp16); LoRA weights stay float32 for the optimizer and the grad scaler.
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    for model, dtype in ((unet, weight_dtype), (text_encoder, weight_dtype), (vae, torch.float32)):
        # dtype only when it changes: diffusers warns on every .to(dtype) of a model.
        model.to(device, **({"dtype": dtype} if model.dtype != dtype else {}))
    for p in (*unet_params, *te_params):
        p.data = p.data.float()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.trains_text_encoder:
            # Non-reentrant: the reentrant variant drops the gradients of LoRA weights behind frozen inputs.
            text_encoder.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
    return unet_params, te_params, weight_dtype


def _prepare_batches(
    pipe: StableDiffusionPipeline,
    table: data.SampleTable,
    dataset_dir: Path,
    config: TrainingConfig,
    seed: int,
    accelerator: Accelerator,
) -> _Batches:
    device = accelerator.device
    latents = data.cache_latents(
        pipe.vae,
        [dataset_dir / p for p in table.image_paths],
        config.resolution,
        generator=torch.Generator().manual_seed(seed),
    )  # kept float32: noise, noisy latents and targets are formed in fp32, only the UNet input is cast
    input_ids = _tokenize(pipe.tokenizer, table.captions).to(device)
    cond = None
    if not config.trains_text_encoder:
        # A frozen text encoder gives each caption the same output every step: encode it once.
        with torch.no_grad(), accelerator.autocast():
            cond = _encode_text(pipe.text_encoder, input_ids)
    return _Batches(
        latents=latents,
        item_image=torch.tensor(table.item_image, device=device),
        input_ids=input_ids,
        loss_weights=table.loss_weights.to(device),
        cond=cond,
        epoch_items=torch.tensor(table.epoch_items, device=device),
    )


def train_lora(
    config: TrainingConfig,
    dataset_dir: Path,
    out_dir: Path,
    *,
    models_dir: Path,
    hooks: EngineHooks | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train one LoRA; files land in out_dir as they are saved. Raises TrainingSetupError before any work
    for a config this worker cannot run, TrainingCanceled when hooks.should_cancel() turns true."""
    hooks = hooks or EngineHooks()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    dev = resolve_device(device)
    check_precision(config.mixed_precision, dev)
    optim.check_optimizer_available(config)
    layout = scan_dataset_dir(
        dataset_dir,
        default_repeats=config.repeats,
        trigger=config.trigger_word,
        class_token=config.class_word,
    )
    plan = compute_plan(layout, config)
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    resolved = resolve_base_model(config.base_model, models_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(config.mixed_precision, dev)
    started_at = time.time()

    hooks.on_stage("loading_model")
    pipe = load_sd15_pipeline(resolved, dtype=torch.float32)
    unet_params, te_params, weight_dtype = _add_network(pipe, config, seed, accelerator.device)
    optimizer = optim.build_optimizer(config, unet_params, te_params)
    lr_scheduler = optim.build_lr_scheduler(config, optimizer, plan.total_steps)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    hooks.on_stage("caching_latents")
    table = data.build_sample_table(layout, dataset_dir)
    batches = _prepare_batches(pipe, table, dataset_dir, config, seed, accelerator)
    run_metadata = export.training_metadata(
        config,
        plan,
        seed=seed,
        optimizer=optim.optimizer_name(optimizer.optimizer),
        tag_freq=export.tag_frequency(
            (export.folder_name(subset, dataset_dir), caption)
            for (subset, _), caption in zip(table.items, table.captions, strict=True)
        ),
        dirs=export.dataset_dirs(layout, dataset_dir, reg=False),
        reg_dirs=export.dataset_dirs(layout, dataset_dir, reg=True),
        started_at=started_at,
    )

    hooks.on_stage("training")
    train_te = config.trains_text_encoder
    pipe.unet.train()
    pipe.text_encoder.train(train_te)
    loss_fn = _LossFn(pipe, batches, accelerator, weight_dtype, seed)
    params = [*unet_params, *te_params]
    accum = config.gradient_accumulation_steps
    rate = _Rate(plan.total_steps)
    files: list[SavedLora] = []
    step = 0
    loss_value: float | None = None
    for epoch in range(1, plan.epochs + 1):
        epoch_batches = data.epoch_batches(
            batches.epoch_items, seed=seed, epoch=epoch, batch_size=config.batch_size
        )
        for first in range(0, len(epoch_batches), accum):
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
        if epoch in plan.saved_epochs:
            hooks.on_stage("saving")
            saved = _save(
                pipe, config, out_dir, run_metadata, epoch=epoch, step=step, is_final=epoch == plan.epochs
            )
            files.append(saved)
            hooks.on_saved(saved)
            if not saved.is_final:
                hooks.on_stage("training")

    pipe.unet.eval()
    pipe.text_encoder.eval()
    return TrainResult(files=files, seed=seed, plan=plan, final_loss=loss_value, pipeline=pipe)


def _save(
    pipe: StableDiffusionPipeline,
    config: TrainingConfig,
    out_dir: Path,
    run_metadata: dict[str, str],
    *,
    epoch: int,
    step: int,
    is_final: bool,
) -> SavedLora:
    path = out_dir / export.lora_file_name(config.output_name, epoch, is_final=is_final)
    export.save_kohya_lora(
        pipe.unet,
        pipe.text_encoder if config.trains_text_encoder else None,
        path,
        network_alpha=config.network_alpha,
        save_dtype=export.SAVE_DTYPES[config.save_precision],
        metadata=export.file_metadata(run_metadata, epoch=epoch, step=step, finished_at=time.time()),
    )
    return SavedLora(path=path, epoch=epoch, step=step, is_final=is_final)
