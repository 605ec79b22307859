"""POST /v1/generations: a prompt with A1111 tags and Kohya flags checked, its LoRAs resolved, queued.

Everything is checked before the job row is written, so a refusal stores nothing.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.errors import validated
from api.generations.loras import catalogue_family, resolve_loras
from api.generations.schemas import GenerationRequest
from api.jobs.submission import queue_job
from api.queue.service import base_model_queue
from api.state import AppState
from api.webhooks.service import JobWebhook
from shared.catalogue.records import UnknownBaseModel, check_base_model
from shared.config.lora_tags import GenerationLine, parse_generation_line
from shared.config.previews import (
    FAMILY_SIZES,
    GenerationSpec,
    LoraRef,
    render_values,
    size_problem,
    t5_options,
    training_render_defaults,
    uses_t5,
)
from shared.config.sample_prompts import MAX_SEED
from shared.db.keys import Identity
from shared.db.models import Job, JobKind, new_id
from shared.errors import LorabakeError
from shared.model_families import FLOW_FAMILIES, traits

# body field -> the Kohya flag that sets the same thing, and the parsed line's attribute
FLAG_OF = {
    "negative_prompt": ("n", "negative_prompt"),
    "width": ("w", "width"),
    "height": ("h", "height"),
    "seed": ("d", "seed"),
    "cfg_scale": ("l", "cfg_scale"),
    "steps": ("s", "steps"),
    "sampler": ("ss", "sampler"),
}


def require_base_model(state: AppState, name: str) -> None:
    """The catalogue's check (a 422 with close names), naming this body's `base_model` field."""
    retention = timedelta(days=state.settings.model_catalogue_days)
    try:
        with state.sessions() as session:
            check_base_model(session, name, retention, state.settings.allow_model_downloads)
    except UnknownBaseModel as exc:
        details = {**exc.details, "field": "base_model"}
        raise UnknownBaseModel(
            exc.message.replace("config.base_model", "base_model"), code=exc.code, details=details
        ) from exc


def parse_prompt(text: str) -> GenerationLine:
    try:
        return parse_generation_line(text)
    except ValueError as exc:
        raise LorabakeError(
            f"prompt: {exc}", code="invalid_prompt", details={"field": "prompt"}, status_code=422
        ) from exc


def lora_job_defaults(session: Session, loras: list[LoraRef], family: str | None) -> dict[str, Any]:
    """The settings a preview of the prompt's first LoRA draws with when asked nothing: its training job's
    resolution and sample settings (none without a LoRA: the family's size and Kohya's defaults)."""
    job = session.get(Job, loras[0].job_id) if loras else None
    if job is None:
        return {}
    t5 = t5_options(job.config) if uses_t5(family) else {}  # FLUX.1, Chroma: encode as its samples were
    return {**training_render_defaults(job.config, family), **t5}


def merged_settings(
    body: GenerationRequest, line: GenerationLine, family: str | None, defaults: dict[str, Any]
) -> dict[str, Any]:
    """Each setting from the body or the prompt's flag (both: a 422 naming the field), else `defaults`
    (lora_job_defaults), else its own default."""
    values: dict[str, Any] = {}
    for field, (flag, attribute) in FLAG_OF.items():
        given = getattr(body, field)
        if given is not None and flag in line.flags:
            raise LorabakeError(
                f"{field} is given twice: in the body and as --{flag} in the prompt; keep one",
                code="conflicting_prompt_flag",
                details={"field": field, "flag": f"--{flag}"},
                status_code=422,
            )
        if given is not None:
            values[field] = given
        elif flag in line.flags:
            values[field] = getattr(line.settings, attribute)
        elif field in defaults:
            values[field] = defaults[field]
    size = FAMILY_SIZES.get(family or "", 512)
    values.setdefault("width", size)
    values.setdefault("height", size)
    if values.get("seed") is None:
        values["seed"] = secrets.randbelow(MAX_SEED + 1)  # recorded on the job: the image can be redrawn
    if family in FLOW_FAMILIES:
        return _flow_settings(values, line, defaults, family)
    return values


def _flow_settings(
    values: dict[str, Any], line: GenerationLine, defaults: dict[str, Any], family: str
) -> dict[str, Any]:
    """A flow family's settings (shared.config.previews.render_values): FLUX.1 takes --g (else the LoRA's
    training's first sample prompt's, else 3.5) as the distilled guidance, with no sampler/CFG/negative
    choice; Chroma takes CFG (--l, else its own 4) and --n with its own scheduler, no --g. Both encode with T5
    as the LoRA's training did, and need sides that are multiples of 16."""
    family_traits = traits(family)
    assert family_traits is not None
    if family_traits.sample_cfg is not None:
        values.setdefault("cfg_scale", family_traits.sample_cfg)  # no --l, no LoRA's training to copy
    guidance = line.settings.guidance_scale if "g" in line.flags else defaults.get("guidance_scale")
    values = render_values({**values, "guidance_scale": guidance}, family)
    if family_traits.t5xxl:
        values.update(t5_options(defaults))  # the LoRA's training's (lora_job_defaults), else the defaults
    for side in ("width", "height"):
        problem = size_problem(family, values[side])
        if problem is not None:
            raise LorabakeError(
                f"{side} {problem}", code="invalid_generation", details={"field": side}, status_code=422
            )
    return values


def generation_spec(**fields: Any) -> GenerationSpec:
    """The spec, each bound checked once more on the merged values (a flag's --s 500 is over 150)."""
    return validated(GenerationSpec, fields, "generation", "invalid_generation")


def submit_generation(
    state: AppState, caller: Identity, body: GenerationRequest, webhook: JobWebhook | None = None
) -> Job:
    line = parse_prompt(body.prompt)
    require_base_model(state, body.base_model)
    with state.sessions() as session:
        family = catalogue_family(session, body.base_model)
        loras = resolve_loras(session, caller.owner, line.loras, family, body.base_model)
        defaults = lora_job_defaults(session, loras, family)
    spec = generation_spec(
        base_model=body.base_model,
        family=family,
        prompt=line.settings.prompt,
        prompt_line=body.prompt,
        loras=[lora.model_dump() for lora in loras],
        **merged_settings(body, line, family, defaults),
    )
    queue = base_model_queue(state, body.base_model, family, body.queue)
    job = Job(
        id=new_id(),
        owner=caller.owner,
        api_key_id=caller.key_id,
        kind=JobKind.generate,
        queue=queue,
        dataset_key="",  # a generation reads no dataset
    )
    steps = spec.denoising_steps  # the job's progress counts denoising steps, as the worker reports them
    return queue_job(state, job, spec.model_dump(mode="json"), {"images": 1}, steps, 0, spec.seed, webhook)
