"""One image from a loaded pipeline, drawn exactly as the training engine draws its sample images
(worker/training/sampling.py): the sampler's scheduler built from the model's own scheduler config, a CPU
generator seeded with the image's seed, the latents decoded by the VAE in its own dtype, so a LoRA at
weight 1 reproduces the training's sample of the same prompt and seed. PNGs carry A1111's `parameters`.

`on_step` runs between two denoising steps (diffusers' `callback_on_step_end`): the job counts its progress
there, and a cancel raised there stops the image at once, as training stops between two steps. FLUX.1 draws
through the same interface (worker/previews/flux_render.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shared.config.sample_prompts import SamplePrompt, a1111_parameters
from worker.training.sampling import _decode, build_scheduler  # the samples' own decode: the same pixels


@dataclass(frozen=True)
class ImageSettings:
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    guidance_scale: float | None = None  # FLUX.1's distilled guidance; None for the SD families

    def meta(self) -> dict[str, Any]:
        """What a client needs to redraw it (the names a training sample's meta uses)."""
        meta = asdict(self)
        if self.guidance_scale is None:
            del meta["guidance_scale"]
        return meta


StepHook = Callable[[int, int], None]


def step_callback(on_step: StepHook | None, steps: int) -> Callable[..., dict[str, Any]] | None:
    """`on_step(done, of)` as diffusers' callback_on_step_end (None: no callback)."""
    if on_step is None:
        return None

    def step_end(pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(index + 1, getattr(pipeline, "num_timesteps", None) or steps)
        return tensors

    return step_end


class Renderer:
    """Draws images from `pipe` (eval mode, no gradients, the global RNG left as it was)."""

    def __init__(
        self,
        pipe: Any,
        *,
        prediction_type: str | None = None,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
        family: str | None = None,
    ) -> None:
        self.pipe = pipe
        self.prediction_type = prediction_type
        self.autocast = autocast
        self.family = family  # the base model's (a LoRA of another family is refused: loras.py)
        self.base_scheduler = pipe.scheduler
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.eval()

    def effective(self, settings: ImageSettings) -> ImageSettings:
        """The settings the image is drawn with (what its PNG and meta record)."""
        return settings

    def render(self, settings: ImageSettings, on_step: StepHook | None = None) -> Image.Image:
        """`on_step(done, of)` after each of the pipeline's `of` scheduler steps; whatever it raises stops
        the image (the scheduler and RNG are restored all the same)."""
        pipe = self.pipe
        devices = [pipe.device] if pipe.device.type == "cuda" else []
        pipe.scheduler = build_scheduler(self.base_scheduler.config, settings.sampler, self.prediction_type)
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                generator = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on any device
                with self.autocast():
                    latents = pipe(
                        prompt=settings.prompt,
                        negative_prompt=settings.negative_prompt,
                        width=settings.width,
                        height=settings.height,
                        num_inference_steps=settings.steps,
                        guidance_scale=settings.cfg_scale,
                        generator=generator,
                        output_type="latent",
                        callback_on_step_end=step_callback(on_step, settings.steps),
                    ).images
                return _decode(pipe, latents)[0]
        finally:
            pipe.scheduler = self.base_scheduler


def lora_tags_text(loras: list[tuple[str, float, float]]) -> str:
    """`<lora:NAME:W>` (or `<lora:NAME:TE:UNET>`) for each LoRA, as A1111 keeps them in its prompt text."""
    tags = [f"<lora:{n}:{te:g}>" if te == unet else f"<lora:{n}:{te:g}:{unet:g}>" for n, te, unet in loras]
    return " ".join(tags)


def parameters_text(
    settings: ImageSettings,
    *,
    model: str,
    loras: list[tuple[str, float, float]],
    hashes: dict[str, str],
    extra: dict[str, object] | None = None,
) -> str:
    """A1111's PNG `parameters`: the prompt with its LoRA tags (PNG Info pastes it back), `Negative prompt:`
    and `Steps: N, Sampler: X, CFG scale: C, Seed: S, Size: WxH, Model: M, Lora hashes: "name: hash"`."""
    text = " ".join(part for part in (settings.prompt, lora_tags_text(loras)) if part)
    prompt = SamplePrompt(
        prompt=text,
        negative_prompt=settings.negative_prompt,
        width=settings.width,
        height=settings.height,
        cfg_scale=settings.cfg_scale,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
    )
    fields: dict[str, object] = {"Model": model}
    if hashes:
        fields["Lora hashes"] = '"' + ", ".join(f"{name}: {h}" for name, h in hashes.items()) + '"'
    return a1111_parameters(
        prompt, seed=settings.seed, sampler=settings.sampler, extra={**fields, **(extra or {})}
    )


def write_png(image: Image.Image, path: Path, parameters: str, record: dict[str, Any]) -> Path:
    """The image with its settings in `parameters` (A1111) and `lorabake` (JSON), complete when it appears."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("lorabake", json.dumps(record, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)
    return path
