"""The body of POST /v1/generations."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.jobs.schemas import WebhookEventsField, WebhookField
from shared.config.previews import MAX_PROMPT, Cfg, Sampler, Seed, Size, Steps


class GenerationRequest(BaseModel):
    """One preview image. Any field left out may come from the prompt's Kohya flags (`--n --w --h --d --l
    --s --ss`); a field given both ways is a 422. Otherwise, with a `<lora:...>` tag: the first LoRA's
    training job's resolution and its first sample prompt's steps, CFG and sampler; without one: Kohya's
    sample defaults (30 steps, CFG 7.5, ddim) at the family's size (512, SDXL 1024). The seed: random
    (recorded on the job)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1, max_length=500, description="a name GET /v1/models lists")
    prompt: str = Field(
        max_length=MAX_PROMPT,
        description="text with any number of `<lora:NAME:WEIGHT>` tags (NAME: a LoRA file of your jobs, "
        "without `.safetensors`; WEIGHT default 1, may be negative) and optional Kohya flags",
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    seed: Seed | None = None
    sampler: Sampler | None = Field(None, description="a Kohya sampler name (or A1111's spelling)")
    steps: Steps | None = None
    cfg_scale: Cfg | None = None
    width: Size | None = None
    height: Size | None = None
    queue: str | None = Field(None, description="a named queue; default: by the base model's family")
    webhook: WebhookField = None
    webhook_events: WebhookEventsField = None
