"""The training engine: one LoRA run from a config and a dataset folder, with no Celery or database.

Kohya's loop: epochs x repeats counted as shared.config.plan counts them, gradient accumulation, a file per
saved epoch (or step), resume state, samples. What differs between model families (loading, conditioning,
noise and target, LoRA targets, key names, sampling) is behind worker/training/families/; nothing here
branches on the family. Callers observe and steer it through EngineHooks.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DiffusionPipeline

from shared.config.plan import TrainingPlan, compute_plan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import scan_dataset_dir
from worker.training import base_quantization, checkpoints, data, export, optim, sampling
from worker.training.errors import TrainingSetupError
from worker.training.families import FamilyModel, load_family_model
from worker.training.model_hashes import ModelHashes, base_model_hashes
from worker.training.model_loading import resolve_base_model, resolve_family
from worker.training.sampling import SavedSample


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
    pipeline: DiffusionPipeline  # the trained in-memory pipeline, adapters attached, in eval mode
    family: str = "sd1"  # the base model's family (shared/catalogue/families.py)
    v_parameterization: bool = False  # trained on v targets (pipeline.scheduler says the same)
    lycoris: torch.nn.Module | None = None  # the LyCORIS network (LoHa/LoKr/DoRA), hooked into the pipeline


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


def resolve_precision(mixed_precision: str, device: torch.device) -> str:
    """The job's mixed precision, with "auto" made concrete for this worker: bf16 where the GPU runs it
    natively, fp16 on older GPUs, no on a CPU (bf16 autocast on a CPU is slower than float32 there)."""
    if mixed_precision != "auto":
        return mixed_precision
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


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
    mixed_precision = resolve_precision(mixed_precision, device)  # previews pass a job's "auto" on
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
    continue_from: Path | None = None,
    network_weights: Path | None = None,
    state_dir: Path | None = None,
    allow_download: bool = False,
    hash_cache: Path | None = None,
) -> TrainResult:
    """Train one LoRA; files land in out_dir as they are saved. Raises TrainingSetupError before any work
    for a config this worker cannot run, TrainingCanceled when hooks.should_cancel() turns true.
    cache_dir: where config.cache_latents_to_disk keeps latents (default: out_dir/.latent-cache).
    state_dir: write a resume state there with every saved file (hooks.on_state_saved announces it).
    resume_from: such a state of this same run: training continues after its step, as if never stopped.
    continue_from: the final state of a finished run of this config with fewer epochs (config.epochs is the
    new total): training goes on from its end, epochs numbered on (checkpoints.check_continuation).
    network_weights: a LoRA file the network starts from (sd-scripts' --network_weights) instead of its
    random init; its modules, ranks and alphas must be the network's (network_weights.NetworkWeightsMismatch).
    hash_cache: a JSON file (the worker's data dir) caching base-model hashes for ss_sd_model_hash across
    jobs (worker/training/model_hashes.py); without it they are cached for this process only."""
    hooks = hooks or EngineHooks()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    dev = resolve_device(device)
    if config.mixed_precision == "auto":  # from here on the run (files, resume state) has a concrete one
        config = config.model_copy(update={"mixed_precision": resolve_precision("auto", dev)})
    check_precision(config.mixed_precision, dev)
    base_quantization.check_available(config, dev)  # nf4 without CUDA, a missing library: before any work
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
    continuing: dict | None = None  # the finished run's final state this run trains on from
    if resume_state is not None:
        checkpoints.check_state(resume_state, config, plan)
    elif continue_from is not None:
        continuing = checkpoints.read_state(Path(continue_from))
        checkpoints.check_continuation(continuing, config, plan)
    state = resume_state if resume_state is not None else continuing
    if state is not None:
        seed = int(state["seed"])  # the run's seed, also when the config let it be chosen
    else:
        seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    resolved = resolve_base_model(config.base_model, models_dir, allow_download=allow_download)
    family = resolve_family(resolved, config.model_family)  # from config files / key names: no weights read
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(config.mixed_precision, dev)
    started_at = time.time()

    hooks.on_stage("loading_model")
    model = load_family_model(resolved, family, config)
    base_hashes = _base_model_hashes(resolved.path, hash_cache)  # once per model file: cached (model_hashes)
    net = model.add_network(config, seed, accelerator.device)
    if network_weights is not None and resume_state is None and continuing is None:
        model.load_network_weights(Path(network_weights), config)  # a resume state holds the weights itself
    optimizer = optim.build_optimizer(config, net.denoiser, net.text_encoder)
    lr_scheduler = optim.build_lr_scheduler(config, optimizer, plan.total_steps)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    hooks.on_stage("caching_latents")
    table = data.build_sample_table(layout, dataset_dir)
    batches = model.prepare_batches(
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
        v_parameterization=model.v_parameterization,
        layout=layout,
        dataset_dir=dataset_dir,
        model_hashes=base_hashes,
    )

    hooks.on_stage("training")
    model.set_train(True, train_text_encoder=config.trains_text_encoder)
    loss_fn = model.loss_fn(batches, accelerator, net.weight_dtype, seed, config)
    params = [*net.denoiser, *net.text_encoder]
    accum = config.gradient_accumulation_steps
    rate = _Rate(plan.total_steps)
    run_metadata.update(export.option_metadata(config))
    run_metadata.update(model.metadata(config))
    ckpt = checkpoints.Checkpointer(
        config=config,
        plan=plan,
        seed=seed,
        out_dir=out_dir,
        hooks=hooks,
        save_file=lambda name, epoch, step, is_final: _save(
            model, config, out_dir, run_metadata, epoch=epoch, step=step, is_final=is_final, name=name
        ),
        train_state=checkpoints.TrainState(
            models=model.trainable_models(),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            noise_generator=loss_fn.generator,
            scaler=accelerator.scaler,
        ),
        state_dir=Path(state_dir) if state_dir is not None else None,
    )
    files = ckpt.files  # this call's saved files that are kept (keep-last-N removes from it)
    if resume_state is not None:
        start = ckpt.resume(resume_state)
    elif continuing is not None:
        start = ckpt.resume(continuing, continuing=True)
    else:
        start = checkpoints.Position()
    step = start.step
    loss_value: float | None = ckpt.loss
    sample = functools.partial(_sample, model, config, out_dir, accelerator, seed, hooks, plan.total_steps)
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
    ckpt.finish()  # the final state, which a longer run continues from

    model.set_train(False, train_text_encoder=False)
    return TrainResult(
        files=files,
        seed=seed,
        plan=plan,
        final_loss=loss_value,
        pipeline=model.pipeline,
        family=family,
        v_parameterization=model.v_parameterization,
        lycoris=model.lycoris,
    )


def _sample(
    model: FamilyModel,
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
    """One image per sample prompt from the in-memory model into out_dir/sample (Kohya's folder)."""
    if not sampling.prompts_of(config):
        return
    hooks.on_stage("sampling")
    model.sample(
        config,
        out_dir,
        accelerator,
        seed,
        epoch=epoch,
        step=step,
        by_epoch=by_epoch,
        on_sample=hooks.on_sample,
    )
    if step < total_steps:
        hooks.on_stage("training")


def _base_model_hashes(path: Path, cache_file: Path | None) -> ModelHashes | None:
    """The base model's A1111 hashes for the metadata; an unreadable file leaves them out (the load that
    follows reports it) rather than failing here."""
    try:
        return base_model_hashes(path, cache_file)
    except OSError:
        return None


def _save(
    model: FamilyModel,
    config: TrainingConfig,
    out_dir: Path,
    run_metadata: dict[str, str],
    *,
    epoch: int,
    step: int,
    is_final: bool,
    name: str | None = None,  # default: the epoch file's name
) -> SavedLora:
    path = out_dir / (name or export.lora_file_name(config.output_name, epoch, is_final=is_final))
    metadata = export.file_metadata(run_metadata, epoch=epoch, step=step, finished_at=time.time())
    model.save(path, config, metadata)
    return SavedLora(path=path, epoch=epoch, step=step, is_final=is_final)
