"""Runs `generate` and `compare` jobs under the runner's lease, keeper and publisher (worker/jobs/runner.py):
fetch the LoRA files, load the base model once, draw each image, publish each as an `image` artifact and,
for a comparison, one `grid` per prompt. Progress counts denoising steps (worker/previews/progress.py) and a
cancel is honoured between two of them, as training honours it between two steps: an image of a slow
model stops within a step, and the worker is free for the next job.

A FLUX.1 base draws as its training samples do (worker/previews/flux_render.py) in the training's weight
dtype (FLUX.1 in float32 is 48 GB), its LoRA files read as adapters by worker/previews/flux_loras.py.

A comparison loads each epoch's LoRA once and changes only its multiplier between weights. Weight 0 adds
exactly nothing (tests/worker/test_previews.py pins it), so its cells are drawn once from the base model,
with no LoRA loaded, and shared by every epoch's row.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from sqlalchemy import select

from shared.config.previews import ComparisonPrompt, ComparisonSpec, GenerationSpec, LoraRef
from shared.db.models import Artifact, JobKind, JobStatus
from shared.errors import LorabakeError
from shared.retrying import OutageOutlasted
from worker.previews.flux_render import ChromaRenderer, FluxRenderer, T5Options
from worker.previews.grid import draw_grid
from worker.previews.loras import AppliedLoras, LoraFile, applied_loras, short_hash
from worker.previews.progress import DenoisingProgress
from worker.previews.render import ImageSettings, Renderer, parameters_text, write_png
from worker.training.engine import TrainingCanceled, make_accelerator, resolve_device
from worker.training.families.base import WEIGHT_DTYPES
from worker.training.families.chroma import load_chroma_pipeline
from worker.training.families.flux import load_flux_pipeline
from worker.training.model_loading import load_pipeline, resolve_base_model, resolve_family

if TYPE_CHECKING:
    from collections.abc import Callable

    from worker.jobs.runner import ClaimedRun


def run_preview_job(run: ClaimedRun) -> None:
    """Raises TrainingCanceled on a cancel (the runner records it) and LorabakeError for the job's faults."""
    if run.job.kind == JobKind.generate:
        generation = GenerationSpec.model_validate(run.job.config)
        job = PreviewRun(run, generation.denoising_steps)
        job.succeed(seed=job.generate(generation))
    else:
        comparison = ComparisonSpec.model_validate(run.job.config)
        job = PreviewRun(run, comparison.denoising_steps)
        job.compare(comparison)
        job.succeed()


class PreviewRun:
    def __init__(self, run: ClaimedRun, total_steps: int) -> None:
        self.run = run
        self.out = run.workdir / "images"
        self.progress = DenoisingProgress(total_steps, run.keeper.report_progress)

    # -- plumbing -----------------------------------------------------------------------------------------
    def fetch_lora(self, ref: LoraRef) -> Path:
        runner = self.run.runner

        def object_key() -> str | None:
            with runner.sessions() as session:
                return session.scalar(select(Artifact.object_key).where(Artifact.id == ref.artifact_id))

        key = runner.retrying("look up a LoRA file", object_key)
        if key is None:
            raise LorabakeError(
                f"LoRA {ref.name!r} (artifact {ref.artifact_id} of job {ref.job_id}) no longer exists",
                code="lora_unavailable",
            )
        dest = self.run.workdir / "loras" / f"{ref.artifact_id}.safetensors"
        try:
            runner.retrying(f"fetch {ref.name}", lambda: runner.store.download_file(key, dest))
        except OutageOutlasted:
            raise
        except Exception as exc:
            raise LorabakeError(
                f"could not fetch LoRA {ref.name!r}: {type(exc).__name__}: {exc}", code="lora_unavailable"
            ) from exc
        return dest

    def load(
        self,
        spec: GenerationSpec | ComparisonSpec,
        mixed_precision: str | None = None,
        prediction_type: str | None = None,
    ) -> Renderer:
        """`mixed_precision` None: a generation's (fp16 on a GPU, bf16 for FLUX.1; none on a CPU)."""
        settings = self.run.settings
        self.run.keeper.add_event("stage", {"stage": "loading_model"})
        resolved = resolve_base_model(
            spec.base_model, settings.models_dir, allow_download=settings.allow_model_downloads
        )
        family = resolve_family(resolved, spec.family or "auto")
        precision = mixed_precision or _generation_precision(family)
        flux = family == "flux1"
        if flux:
            pipe = load_flux_pipeline(resolved, dtype=WEIGHT_DTYPES.get(precision, torch.float32))
        elif family == "chroma":
            pipe = load_chroma_pipeline(resolved, dtype=WEIGHT_DTYPES.get(precision, torch.float32))
        else:
            pipe = load_pipeline(resolved, family, dtype=torch.float32)
        device = resolve_device(None)
        pipe.to(device)
        autocast: Callable[[], AbstractContextManager[Any]] = make_accelerator(precision, device).autocast
        self.run.keeper.add_event("stage", {"stage": "rendering"})
        self.run.keeper.set_status(JobStatus.rendering)
        if flux:
            t5 = T5Options(spec.t5xxl_max_token_length, spec.apply_t5_attn_mask)
            return FluxRenderer(pipe, t5=t5, autocast=autocast)
        if family == "chroma":
            return ChromaRenderer(pipe, t5=T5Options(spec.t5xxl_max_token_length), autocast=autocast)
        return Renderer(pipe, prediction_type=prediction_type, autocast=autocast, family=family)

    def check_cancel(self) -> None:
        if self.run.must_stop():
            raise TrainingCanceled(self.progress.step, [])

    def render(self, renderer: Renderer, settings: ImageSettings) -> Image.Image:
        """One image, its progress counted and a cancel checked between two denoising steps."""

        def between_steps(index: int, of: int) -> None:
            self.progress.at(settings.steps, index, of)
            self.check_cancel()  # raised inside the pipeline's loop: the image stops here

        self.check_cancel()
        self.progress.begin()
        image = renderer.render(settings, on_step=between_steps)
        self.progress.finished(settings.steps)
        return image

    def publish(self, path: Path, **details: Any) -> None:
        self.run.publisher.publish(path, content_type="image/png", **details)

    def succeed(self, **fields: Any) -> None:
        self.run.publisher.drain()  # the job ends only once every image is in storage and listed
        self.run.keeper.flush()
        self.run.finish(JobStatus.succeeded, **fields)

    # -- generate -----------------------------------------------------------------------------------------
    def generate(self, spec: GenerationSpec) -> int:
        files = [LoraFile(self.fetch_lora(r), r.name, r.te_weight, r.unet_weight) for r in spec.loras]
        renderer = self.load(spec)
        settings = renderer.effective(
            ImageSettings(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                seed=spec.seed,
                sampler=spec.sampler,
                steps=spec.steps,
                cfg_scale=spec.cfg_scale,
                width=spec.width,
                height=spec.height,
                guidance_scale=spec.guidance_scale,
            )
        )
        with applied_loras(renderer.pipe, files, renderer.family):
            image = self.render(renderer, settings)
        hashes = {f.name: short_hash(f.path, r.sha256) for f, r in zip(files, spec.loras, strict=True)}
        weights = [(f.name, f.te_weight, f.unet_weight) for f in files]
        parameters = parameters_text(settings, model=spec.base_model, loras=weights, hashes=hashes)
        meta = {**settings.meta(), "loras": [r.model_dump(mode="json") for r in spec.loras]}
        path = write_png(image, self.out / f"preview-{spec.seed}.png", parameters, meta)
        self.publish(path, kind="image", meta=meta)
        return spec.seed

    # -- compare ------------------------------------------------------------------------------------------
    def compare(self, spec: ComparisonSpec) -> None:
        files = {ref.epoch: self.fetch_lora(ref) for ref in spec.epochs}
        renderer = self.load(spec, spec.mixed_precision, spec.prediction_type)
        cells: dict[tuple[int, int, float, int], Path] = {}  # (prompt, epoch, weight, seed) -> its PNG
        base_cells: dict[tuple[int, int], Path] = {}
        for ref in spec.epochs:
            loaded: AppliedLoras | None = None
            try:
                for weight in spec.weights:
                    if weight != 0 and loaded is None:
                        loaded = AppliedLoras(renderer.pipe, renderer.family)
                        loaded.add(LoraFile(files[ref.epoch], ref.name, 1.0, 1.0))
                    if loaded is not None:
                        loaded.reweight([(weight, weight)])
                    for index, prompt in enumerate(spec.prompts):
                        for seed in prompt.seeds:
                            cells[(index, ref.epoch or 0, weight, seed)] = self.cell(
                                renderer, spec, index, prompt, ref, files[ref.epoch], weight, seed, base_cells
                            )
            finally:
                if loaded is not None:
                    loaded.remove()
        for index, prompt in enumerate(spec.prompts):
            self.grid(spec, index, prompt, cells)

    def cell(
        self,
        renderer: Renderer,
        spec: ComparisonSpec,
        index: int,
        prompt: ComparisonPrompt,
        ref: LoraRef,
        lora_path: Path,
        weight: float,
        seed: int,
        base_cells: dict[tuple[int, int], Path],
    ) -> Path:
        self.check_cancel()  # also before a weight-0 cell that is copied, not drawn
        settings = renderer.effective(
            ImageSettings(
                prompt=prompt.prompt,
                negative_prompt=prompt.negative_prompt,
                seed=seed,
                sampler=prompt.sampler,
                steps=prompt.steps,
                cfg_scale=prompt.cfg_scale,
                width=prompt.width,
                height=prompt.height,
                guidance_scale=prompt.guidance_scale,
            )
        )
        if weight == 0 and (index, seed) in base_cells:
            image = Image.open(base_cells[(index, seed)])
            image.load()
        else:
            image = self.render(renderer, settings)
        epoch = ref.epoch or 0
        parameters = parameters_text(
            settings,
            model=spec.base_model,
            loras=[(ref.name, weight, weight)],
            hashes={ref.name: short_hash(lora_path, ref.sha256)},
            extra={"Epoch": epoch},
        )
        meta = {
            **settings.meta(),
            "prompt_index": index,
            "epoch": epoch,
            "weight": weight,
            "lora": ref.name,
            "lora_artifact_id": ref.artifact_id,
            "source_job_id": spec.source_job_id,
        }
        name = f"{spec.output_name}_p{index:02d}_e{epoch:06d}_w{weight:g}_s{seed}.png"
        path = write_png(image, self.out / name, parameters, meta)
        if weight == 0:
            base_cells.setdefault((index, seed), path)
        self.publish(path, kind="image", epoch=epoch, meta=meta)
        return path

    def grid(
        self,
        spec: ComparisonSpec,
        index: int,
        prompt: ComparisonPrompt,
        cells: dict[tuple[int, int, float, int], Path],
    ) -> None:
        rows = [(ref.epoch or 0, seed) for ref in spec.epochs for seed in prompt.seeds]
        several = len(prompt.seeds) > 1
        row_labels = [f"epoch {e}" + (f", seed {s}" if several else "") for e, s in rows]
        column_labels = [f"weight {w:g}" for w in spec.weights]
        paths = [[cells[(index, e, w, s)] for w in spec.weights] for e, s in rows]
        images = [[Image.open(p) for p in row] for row in paths]
        grid, layout = draw_grid(images, row_labels, column_labels)
        meta = {
            **layout.meta(),
            "prompt_index": index,
            "prompt": prompt.prompt,
            "epochs": [e for e, _ in rows],
            "seeds": [s for _, s in rows],
            "weights": list(spec.weights),
            "cells": [[p.name for p in row] for row in paths],
        }
        text = f"{prompt.prompt}\nX/Y plot: weights {', '.join(column_labels)}; rows {', '.join(row_labels)}"
        path = write_png(grid, self.out / f"{spec.output_name}_grid_p{index:02d}.png", text, meta)
        self.publish(path, kind="grid", meta=meta)


def _generation_precision(family: str) -> str:
    """fp16 autocast on a GPU (the VAE stays float32, as in training), bf16 weights for FLUX.1 (as it is
    trained and shipped); full precision on a CPU."""
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if family in ("flux1", "chroma") else "fp16"
