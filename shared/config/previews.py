"""What a generation job (`generate`: one image from a base model and any LoRAs) and a comparison job
(`compare`: a training job's epochs x LoRA weights) record as their config: the API writes it once every
name is resolved and every bound checked, the worker reads it back (worker/previews/).

Both are torch-free so the API can validate them. Bounds are A1111's UI limits where it has them (150
steps, CFG 30), sizes a multiple of 8 (the VAE's factor), as Kohya and A1111 round them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.config.lora_tags import MAX_WEIGHT
from shared.config.sample_prompts import (
    DEFAULT_CFG,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_SEED,
    normalize_sampler,
)

MAX_STEPS = 150
MAX_CFG = 30.0
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_PROMPT = 2000  # characters; CLIP reads 75 tokens anyway
MAX_IMAGES = 256  # images in one comparison
MAX_WEIGHTS = 8
MAX_SEEDS = 8
MAX_PROMPTS = 8
FAMILY_SIZES = {"sd1": 512, "sd2": 512, "sdxl": 1024}  # a size of nothing asked: the family's own


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8, got {value} (try {value - value % 8})")
    return value


def _sampler(value: str) -> str:
    return normalize_sampler(value)  # ValueError naming the known samplers


Size = Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE), AfterValidator(_multiple_of_8)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Cfg = Annotated[float, Field(ge=0.0, le=MAX_CFG)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Sampler = Annotated[str, AfterValidator(_sampler)]
Weight = Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)]
Family = Literal["sd1", "sd2", "sdxl"]


class RenderSettings(BaseModel):
    """How one image is drawn (every image of a comparison shares these but its prompt and seed)."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str = Field("", max_length=MAX_PROMPT)
    sampler: Sampler = DEFAULT_SAMPLER
    steps: Steps = DEFAULT_STEPS
    cfg_scale: Cfg = DEFAULT_CFG
    width: Size = 512
    height: Size = 512


class LoraRef(BaseModel):
    """One LoRA artifact a job applies, resolved by the API from a tag or a training job's epoch."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the file name without extension (what a tag names)
    job_id: str  # the training job it came from
    artifact_id: str
    sha256: str
    epoch: int | None = None
    te_weight: Weight = 1.0
    unet_weight: Weight = 1.0
    tag: str | None = None  # the prompt's tag that named it (generations)


class GenerationSpec(RenderSettings):
    """A `generate` job: one image."""

    base_model: str
    family: Family | None  # None: the catalogue has not read it (the LoRA check was then skipped)
    prompt: str = Field(max_length=MAX_PROMPT)  # without its <lora:...> tags
    prompt_line: str  # as sent
    seed: Seed
    loras: list[LoraRef] = []


class ComparisonPrompt(RenderSettings):
    """One prompt of a comparison with its own settings: the request's, else its Kohya line's flags."""

    prompt: str = Field(max_length=MAX_PROMPT)
    seeds: list[Seed] = Field(min_length=1, max_length=MAX_SEEDS)


class ComparisonSpec(BaseModel):
    """A `compare` job: every (prompt, epoch, weight, seed) image of a training job's LoRAs, and a labelled
    grid per prompt (rows: epochs, and seeds when there are several; columns: weights)."""

    model_config = ConfigDict(extra="forbid")

    source_job_id: str
    base_model: str
    family: Family | None
    output_name: str
    prompts: list[ComparisonPrompt] = Field(min_length=1, max_length=MAX_PROMPTS)
    epochs: list[LoraRef] = Field(min_length=1)  # one per compared epoch, in order
    weights: list[Weight] = Field(min_length=1, max_length=MAX_WEIGHTS)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # the training's; None: the model's
    mixed_precision: str = "no"  # the training's: its samples were drawn under this autocast

    @property
    def images(self) -> int:
        return sum(len(p.seeds) for p in self.prompts) * len(self.epochs) * len(self.weights)
