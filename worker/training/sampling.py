"""Sample images from the in-memory training pipeline, as Kohya's sample_images does during a run.

Each prompt runs through the pipeline the engine trains (LoRA attached, whatever its family: the pipeline
object is called generically, so an SDXL pipeline works the same way) with its sampler's scheduler built from
the model's own scheduler config, a CPU generator seeded with ``--d`` (or a seed derived from the run's seed),
under the training autocast, in eval mode and without gradients. The latents are decoded by the VAE in its
own dtype outside autocast (the engine keeps it float32: SD's VAE overflows in fp16). Each PNG carries its
settings in A1111's ``parameters`` text chunk and as JSON in ``lorabake``. Afterwards the modules' train/eval
flags, the pipeline's scheduler and the global RNG state are as they were, so sampling never changes training.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shared.config.sample_prompts import (
    SAMPLERS,
    SamplePrompt,
    a1111_parameters,
    derive_seed,
    normalize_sampler,
    parse_prompt_lines,
)
from shared.config.spec import TrainingConfig
from worker.training.errors import TrainingSetupError


@dataclass(frozen=True)
class SavedSample:
    path: Path
    epoch: int  # 0 for samples before the first step
    step: int
    prompt_index: int  # position among the config's prompts (comments and blank lines not counted)
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    cfg: float
    steps: int
    sampler: str
    guidance_scale: float | None = None  # FLUX.1's distilled guidance (--g); None for the SD families

    def meta(self) -> dict[str, Any]:
        """What a client needs to reproduce the image (stored as the artifact's meta)."""
        extra = {"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {}
        return {
            **extra,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "cfg_scale": self.cfg,
            "steps": self.steps,
            "sampler": self.sampler,
            "prompt_index": self.prompt_index,
        }


def prompts_of(config: TrainingConfig) -> list[SamplePrompt]:
    """The config's sample prompts, parsed (the API already refused lines that do not parse)."""
    return parse_prompt_lines(config.sample_prompts)


def check_samplers_available(config: TrainingConfig) -> None:
    """Before any work: every sampler the run will use can be built on this worker."""
    names = {config.sample_sampler, *(p.sampler for p in prompts_of(config) if p.sampler)}
    for name in sorted(names):
        package = SAMPLERS[normalize_sampler(name)].requires
        if package is None:
            continue
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise TrainingSetupError(
                f"sampler {name!r} needs the Python package {package!r}, which this worker lacks; "
                "pick another sampler (e.g. euler_a, ddim, dpm++_2m_karras)",
                details={"field": "sample_sampler"},
            ) from exc


def due_at_step(config: TrainingConfig, step: int) -> bool:
    """Kohya's sample_images_common: every N steps, unless sample_every_n_epochs is set (it takes over)."""
    n = config.sample_every_n_steps
    return config.sample_every_n_epochs is None and n is not None and step % n == 0


def due_at_epoch(config: TrainingConfig, epoch: int) -> bool:
    n = config.sample_every_n_epochs
    return n is not None and epoch % n == 0


def sample_file_name(output_name: str, *, epoch: int, step: int, by_epoch: bool, prompt_index: int) -> str:
    """Kohya's `{output_name}_{e000003 | 000200}_{NN}.png` (epoch samples and the first ones `e`, step samples
    the step), without Kohya's timestamp and seed suffix: a re-run of a job makes the same names."""
    when = f"e{epoch:06d}" if by_epoch else f"{step:06d}"
    return f"{output_name}_{when}_{prompt_index:02d}.png"


def build_scheduler(base_config: Any, sampler: str, prediction_type: str | None = None) -> Any:
    """The sampler's diffusers scheduler from the model's scheduler config (betas, spacing, prediction type
    carried over), e.g. ``dpm++_2m_karras`` -> DPMSolverMultistepScheduler(use_karras_sigmas=True)."""
    spec = SAMPLERS[normalize_sampler(sampler)]
    scheduler_class = getattr(diffusers, spec.scheduler)
    overrides: dict[str, Any] = dict(spec.options)
    if prediction_type is not None:
        overrides["prediction_type"] = prediction_type
    return scheduler_class.from_config(base_config, **overrides)


def _decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    config = vae.config
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # as SDXL's pipeline un-normalizes, for VAEs that carry these
        mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    image = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


def _write_png(image: Image.Image, path: Path, parameters: str, record: dict[str, Any]) -> None:
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("lorabake", json.dumps(record, ensure_ascii=False))
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)  # complete when announced


def _draw_sd(
    pipe: Any,
    prompt: SamplePrompt,
    generator: torch.Generator,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> Image.Image:
    with autocast():
        latents = pipe(
            prompt=prompt.prompt,
            negative_prompt=prompt.negative_prompt,  # "" is encoded, as Kohya and A1111 do
            width=prompt.width,
            height=prompt.height,
            num_inference_steps=prompt.steps,
            guidance_scale=prompt.cfg_scale,
            generator=generator,
            output_type="latent",
        ).images
    return _decode(pipe, latents)[0]


def generate_samples(
    pipe: Any,
    prompts: Sequence[SamplePrompt],
    out_dir: Path,
    *,
    output_name: str,
    epoch: int,
    step: int,
    by_epoch: bool,
    default_sampler: str,
    run_seed: int,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    prediction_type: str | None = None,
    on_sample: Callable[[SavedSample], None] | None = None,
    extra_parameters: dict[str, object] | None = None,
    draw: Callable[[SamplePrompt, torch.Generator], Image.Image] | None = None,
) -> list[SavedSample]:
    """One image per prompt into out_dir; on_sample is called after each file is completely written.
    draw: the family's own way to draw one image (FLUX: cached prompt embeddings, its own scheduler);
    default: the pipeline called with the sampler's scheduler, decoded as the SD families decode."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    modes = [(sub, sub.training) for module in modules for sub in module.modules()]
    original_scheduler = pipe.scheduler
    device = pipe.device
    saved: list[SavedSample] = []
    try:
        pipe.set_progress_bar_config(disable=True)
        for module in modules:
            module.eval()
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
            for index, prompt in enumerate(prompts):
                sampler = normalize_sampler(prompt.sampler or default_sampler)
                seed = prompt.seed if prompt.seed is not None else derive_seed(run_seed, index)
                # A CPU generator: the same seed gives the same starting noise on any device.
                generator = torch.Generator("cpu").manual_seed(seed)
                if draw is not None:
                    with autocast():
                        image = draw(prompt, generator)
                else:
                    pipe.scheduler = build_scheduler(original_scheduler.config, sampler, prediction_type)
                    image = _draw_sd(pipe, prompt, generator, autocast)
                sample = SavedSample(
                    path=out_dir
                    / sample_file_name(
                        output_name, epoch=epoch, step=step, by_epoch=by_epoch, prompt_index=index
                    ),
                    epoch=epoch,
                    step=step,
                    prompt_index=index,
                    prompt=prompt.prompt,
                    negative_prompt=prompt.negative_prompt,
                    seed=seed,
                    width=prompt.width,
                    height=prompt.height,
                    cfg=prompt.cfg_scale,
                    steps=prompt.steps,
                    sampler=sampler,
                    guidance_scale=prompt.guidance_scale,
                )
                parameters = a1111_parameters(
                    prompt,
                    seed=seed,
                    sampler=sampler,
                    extra={**(extra_parameters or {}), "Epoch": epoch, "Step": step},
                )
                _write_png(image, sample.path, parameters, {**sample.meta(), "epoch": epoch, "step": step})
                saved.append(sample)
                if on_sample is not None:
                    on_sample(sample)
    finally:
        pipe.scheduler = original_scheduler
        for sub, training in modes:
            sub.training = training
    return saved
