"""The body of POST /v1/jobs/{id}/comparisons."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.jobs.schemas import WebhookEventsField, WebhookField
from shared.config.previews import (
    MAX_PROMPT,
    MAX_PROMPTS,
    MAX_SEEDS,
    MAX_WEIGHTS,
    Cfg,
    Sampler,
    Seed,
    Size,
    Steps,
    Weight,
)

DEFAULT_WEIGHTS = (0.0, 0.5, 0.75, 1.0)
T = TypeVar("T")


def _distinct(values: list[T] | None) -> list[T] | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("each value may appear once")
    return values


class ComparisonRequest(BaseModel):
    """Every field is optional. Left out: the training job's sample prompts (else its `trigger class`),
    weights 0, 0.5, 0.75, 1, every saved epoch, each prompt's own seed (its `--d`, else the seed its
    training samples used), and each prompt's settings: for one of the job's sample prompts, those its
    training samples were drawn with (its flags, else Kohya's sample defaults and the job's
    `sample_sampler`); for any other line, its flags, else the job's training resolution and its first
    sample prompt's settings. A field given here applies to every prompt, over the line's flag."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[Annotated[str, Field(max_length=MAX_PROMPT)]] | None = Field(
        None, min_length=1, max_length=MAX_PROMPTS, description="Kohya prompt lines (flags allowed)"
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    weights: Annotated[list[Weight] | None, AfterValidator(_distinct)] = Field(
        None, min_length=1, max_length=MAX_WEIGHTS, description="LoRA multipliers, as <lora:NAME:WEIGHT>"
    )
    epochs: Annotated[list[Annotated[int, Field(ge=1)]] | None, AfterValidator(_distinct)] = Field(
        None, min_length=1, description="saved epochs to compare; default: every saved one"
    )
    seeds: Annotated[list[Seed] | None, AfterValidator(_distinct)] = Field(
        None, min_length=1, max_length=MAX_SEEDS
    )
    sampler: Sampler | None = None
    steps: Steps | None = None
    cfg_scale: Cfg | None = None
    width: Size | None = None
    height: Size | None = None
    queue: str | None = Field(None, description="a named queue; default: by the base model's family")
    webhook: WebhookField = None
    webhook_events: WebhookEventsField = None
