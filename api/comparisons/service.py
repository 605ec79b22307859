"""POST /v1/jobs/{id}/comparisons: a training job's saved epochs x LoRA weights, checked and queued.

The compared LoRAs are the job's epoch files (`NAME-000003.safetensors`, and the final `NAME.safetensors`),
not its step saves. Everything is checked before the job row is written, so a refusal stores nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, selectinload

from api.comparisons.schemas import DEFAULT_WEIGHTS, ComparisonRequest
from api.errors import validated
from api.generations.loras import training_family
from api.jobs.submission import queue_job
from api.queue.service import base_model_queue
from api.state import AppState
from api.webhooks.service import JobWebhook
from shared.config.lora_tags import has_lora_tag, line_flags
from shared.config.previews import (
    MAX_IMAGES,
    ComparisonSpec,
    LoraRef,
    render_values,
    sample_cfg,
    sample_lines,
    size_problem,
    t5_options,
    training_render_defaults,
    uses_t5,
)
from shared.config.sample_prompts import DEFAULT_SAMPLER, SamplePrompt, derive_seed, parse_prompt_line
from shared.db.keys import Identity
from shared.db.models import Artifact, Job, JobKind, is_object_id, new_id
from shared.errors import LorabakeError, NotFoundError
from shared.jobs.retention import check_job_files
from shared.model_families import FLOW_FAMILIES


def owned_training_job(session: Session, owner: str, job_id: str) -> Job:
    job = session.get(Job, job_id, options=[selectinload(Job.artifacts)]) if is_object_id(job_id) else None
    if job is None or job.owner != owner:  # another owner's job is indistinguishable from a missing one
        raise NotFoundError(f"no job {job_id}", details={"job_id": job_id})
    return job


def _is_epoch_file(artifact: Artifact, output_name: str) -> bool:
    if artifact.kind != "lora" or artifact.epoch is None:
        return False
    if artifact.is_final and artifact.name == f"{output_name}.safetensors":
        return True
    return artifact.name == f"{output_name}-{artifact.epoch:06d}.safetensors"


def saved_epochs(job: Job) -> dict[int, Artifact]:
    """epoch -> its LoRA file (a 409 when the job saved none)."""
    output_name = str(job.config.get("output_name", "lora"))
    saved = {a.epoch: a for a in job.artifacts if _is_epoch_file(a, output_name) and a.epoch is not None}
    if job.kind != JobKind.train or not saved:
        raise LorabakeError(
            f"job {job.id} has no saved LoRA epoch to compare (yet)",
            code="no_saved_lora",
            details={"job_id": job.id, "status": job.status},
            status_code=409,
        )
    return dict(sorted(saved.items()))


def chosen_epochs(saved: dict[int, Artifact], asked: list[int] | None) -> list[int]:
    if asked is None:
        return list(saved)
    missing = [epoch for epoch in asked if epoch not in saved]
    if missing:
        raise LorabakeError(
            f"epochs {missing} were not saved by this job; saved: {list(saved)}",
            code="unknown_epoch",
            details={"field": "epochs", "missing": missing, "saved": list(saved)},
            status_code=422,
        )
    return asked


def default_prompt_lines(job: Job) -> list[str]:
    """The job's sample prompts, else its first training folder's `trigger class` (or its config's)."""
    lines = [line for line in job.config.get("sample_prompts") or [] if parse_prompt_line(line) is not None]
    if lines:
        return lines
    for subset in job.plan.get("subsets") or []:
        words = [subset.get("trigger"), subset.get("class_token")]
        if not subset.get("is_reg") and any(words):
            return [" ".join(w for w in words if w)]
    words = [job.config.get("trigger_word"), job.config.get("class_word")]
    return [" ".join(w for w in words if w) or str(job.config.get("output_name", "lora"))]


def _parsed_line(line: str, index: int) -> SamplePrompt:
    field = f"prompts.{index}"
    try:
        parsed = parse_prompt_line(line)
    except ValueError as exc:
        raise LorabakeError(
            f"{field}: {exc}", code="invalid_prompt", details={"field": field}, status_code=422
        ) from exc
    if parsed is None:
        raise LorabakeError(
            f"{field} is blank or a '#' comment",
            code="invalid_prompt",
            details={"field": field},
            status_code=422,
        )
    if has_lora_tag(line):
        raise LorabakeError(
            f"{field}: no <lora:...> tags here; the comparison applies the job's own LoRA at each weight",
            code="invalid_prompt",
            details={"field": field},
            status_code=422,
        )
    return parsed


# a prompt setting -> the Kohya flag that sets it on a line
SETTING_FLAGS = {
    "sampler": "ss",
    "steps": "s",
    "cfg_scale": "l",
    "width": "w",
    "height": "h",
    "guidance_scale": "g",
}


def line_settings(job: Job, line: str, parsed: SamplePrompt, family: str | None) -> dict[str, Any]:
    """A line's sampler, steps, CFG and size. One of the job's own sample prompts: exactly what its training
    samples were drawn with (its flags, else Kohya's defaults), so a weight-1 cell is the training's sample.
    Any other line (typed, or `trigger class`): its flags, else the job's training resolution and sample
    settings (shared.config.previews.training_render_defaults), not the base model's 512 and 30 steps."""
    own = {
        "sampler": parsed.sampler or str(job.config.get("sample_sampler") or DEFAULT_SAMPLER),
        "steps": parsed.steps,
        "cfg_scale": sample_cfg(parsed, family),  # Chroma's samples: 4 without --l
        "width": parsed.width,
        "height": parsed.height,
        "guidance_scale": parsed.guidance_scale,
    }
    if line.strip() in {s.strip() for s in sample_lines(job.config)}:
        return own
    flags, defaults = line_flags(line), training_render_defaults(job.config, family)
    return {k: own[k] if SETTING_FLAGS[k] in flags else defaults[k] for k in own}


def comparison_prompts(
    job: Job, body: ComparisonRequest, lines: list[str], family: str | None
) -> list[dict[str, Any]]:
    """Each prompt's settings: the body's field, else its line's (line_settings), as a dict for
    ComparisonSpec (which checks the bounds on the merged values)."""
    run_seed = job.seed or 0
    prompts = []
    for index, line in enumerate(lines):
        parsed = _parsed_line(line, index)
        own_seed = parsed.seed if parsed.seed is not None else derive_seed(run_seed, index)
        settings = line_settings(job, line, parsed, family)
        prompts.append(
            {
                "prompt": parsed.prompt,
                "negative_prompt": body.negative_prompt
                if body.negative_prompt is not None
                else parsed.negative_prompt,
                "seeds": body.seeds or [own_seed],  # the seed its training samples used
                "sampler": body.sampler or settings["sampler"],
                "steps": body.steps or settings["steps"],
                "cfg_scale": body.cfg_scale if body.cfg_scale is not None else settings["cfg_scale"],
                "width": body.width or settings["width"],
                "height": body.height or settings["height"],
                "guidance_scale": settings["guidance_scale"],
            }
        )
        prompts[-1] = render_values(prompts[-1], family)  # FLUX.1's --g, Chroma's CFG, no --g for SD
        if family in FLOW_FAMILIES:
            _check_sizes(body, prompts[-1], family, index)
    return prompts


def _check_sizes(body: ComparisonRequest, prompt: dict[str, Any], family: str, index: int) -> None:
    """A flow family's sides are multiples of 16: a 422 naming the body's field, else the prompt line."""
    for side in ("width", "height"):
        problem = size_problem(family, prompt[side])
        if problem is not None:
            field = side if getattr(body, side) else f"prompts.{index}"
            raise LorabakeError(
                f"{field}: {side} {problem}",
                code="invalid_comparison",
                details={"field": field},
                status_code=422,
            )


def _prediction_type(config: dict[str, Any]) -> str | None:
    v = config.get("v_parameterization")
    return None if v is None else ("v_prediction" if v else "epsilon")


def comparison_spec(session: Session, job: Job, body: ComparisonRequest) -> ComparisonSpec:
    saved = saved_epochs(job)
    epochs = chosen_epochs(saved, body.epochs)
    lines = body.prompts if body.prompts is not None else default_prompt_lines(job)
    family = training_family(session, job.config)
    fields = {
        "source_job_id": job.id,
        "base_model": str(job.config.get("base_model", "")),
        "family": family,
        "output_name": str(job.config.get("output_name", "lora")),
        "prompts": comparison_prompts(job, body, lines, family),
        "epochs": [
            LoraRef(
                name=saved[e].name.removesuffix(".safetensors"),
                job_id=job.id,
                artifact_id=saved[e].id,
                sha256=saved[e].sha256,
                epoch=e,
            ).model_dump()
            for e in epochs
        ],
        "weights": list(body.weights if body.weights is not None else DEFAULT_WEIGHTS),
        "prediction_type": _prediction_type(job.config),
        "mixed_precision": str(job.config.get("mixed_precision", "no")),
        **(t5_options(job.config) if uses_t5(family) else {}),
    }
    spec = validated(ComparisonSpec, fields, "comparison", "invalid_comparison")
    if spec.images > MAX_IMAGES:
        raise LorabakeError(
            f"this comparison makes {spec.images} images (prompts x seeds x epochs x weights); "
            f"at most {MAX_IMAGES}: ask for fewer epochs, weights or seeds",
            code="too_many_images",
            details={"field": "epochs", "images": spec.images, "max_images": MAX_IMAGES},
            status_code=422,
        )
    return spec


def submit_comparison(
    state: AppState, caller: Identity, job_id: str, body: ComparisonRequest, webhook: JobWebhook | None = None
) -> Job:
    with state.sessions() as session:
        source = owned_training_job(session, caller.owner, job_id)
        check_job_files(source)  # a 410 naming the date once retention deleted its files
        spec = comparison_spec(session, source, body)
    queue = base_model_queue(state, spec.base_model, spec.family, body.queue)
    job = Job(
        id=new_id(),
        owner=caller.owner,
        api_key_id=caller.key_id,
        kind=JobKind.compare,
        queue=queue,
        dataset_key="",  # a comparison reads no dataset
    )
    plan = {"images": spec.images, "grids": len(spec.prompts), "source_job_id": source.id}
    steps = spec.denoising_steps  # the job's progress counts denoising steps, as the worker reports them
    return queue_job(state, job, spec.model_dump(mode="json"), plan, steps, 0, None, webhook)
