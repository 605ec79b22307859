"""What a generation job (`generate`: one image from a base model and any LoRAs) and a comparison job
(`compare`: a training job's epochs x LoRA weights) record as their config: the API writes it once every
name is resolved and every bound checked, the worker reads it back (worker/previews/).

Both are torch-free so the API can validate them. Bounds are A1111's UI limits where it has them (150
steps, CFG 30), sizes a multiple of 8 (the VAE's factor), as Kohya and A1111 round them; FLUX.1 sizes a
multiple of 16 (its latents are packed in 2x2 patches).

FLUX.1 draws as its training samples do (worker/training/families/flux.py): its own flow-matching Euler
scheduler, no negative prompt and no classifier-free guidance, the distilled guidance from `--g` (3.5 unless
given). A FLUX.1 spec records exactly that (flux_render_values), whatever sampler or CFG was asked for.
Chroma (no guidance embedding) draws with its own Euler scheduler and classifier-free guidance at --l (4
unless given, its family's `sample_cfg`) against --n; --g means nothing (chroma_render_values). Which of these
a family does is its row in shared/model_families.py (`guidance`, `sample_cfg`, `t5xxl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.catalogue.families import ModelFamily
from shared.config.family_options import SD_SIZE_MULTIPLE, SIZE_MULTIPLES
from shared.config.lora_tags import MAX_WEIGHT
from shared.config.sample_prompts import (
    DEFAULT_CFG,
    DEFAULT_SAMPLER,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    MAX_SEED,
    SamplePrompt,
    normalize_sampler,
    parse_prompt_lines,
)
from shared.model_families import FAMILIES, TRAITS, traits

MAX_STEPS = 150
MAX_CFG = 30.0
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_PROMPT = 2000  # characters; CLIP reads 75 tokens anyway
MAX_IMAGES = 256  # images in one comparison
MAX_WEIGHTS = 8
MAX_SEEDS = 8
MAX_PROMPTS = 8
FAMILY_SIZES = {f: TRAITS[f].native_resolution for f in FAMILIES}  # nothing asked: the family's own
FLUX_SAMPLER = "euler"  # FLUX.1 draws with its own FlowMatchEulerDiscreteScheduler, whatever is asked
FLUX_GUIDANCE = 3.5  # sd-scripts' --g default for FLUX.1 dev samples


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
Family = ModelFamily  # shared/model_families.py: the one list of families


class RenderSettings(BaseModel):
    """How one image is drawn (every image of a comparison shares these but its prompt and seed)."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str = Field("", max_length=MAX_PROMPT)
    sampler: Sampler = DEFAULT_SAMPLER
    steps: Steps = DEFAULT_STEPS
    cfg_scale: Cfg = DEFAULT_CFG
    width: Size = 512
    height: Size = 512
    guidance_scale: Cfg | None = None  # FLUX.1's distilled guidance (--g); None for the SD families


def flux_render_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Render settings as FLUX.1 draws them (its training samples' flux_prompt): sampler "euler", CFG 1, no
    negative prompt, the distilled guidance of --g or 3.5."""
    guidance = values.get("guidance_scale")
    return {
        **values,
        "sampler": FLUX_SAMPLER,
        "cfg_scale": 1.0,
        "negative_prompt": "",
        "guidance_scale": FLUX_GUIDANCE if guidance is None else guidance,
    }


def chroma_render_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Render settings as Chroma draws them (its training samples' chroma_prompt): sampler "euler", CFG and
    negative prompt as asked, no distilled guidance."""
    return {**values, "sampler": FLUX_SAMPLER, "guidance_scale": None}


def render_values(values: Mapping[str, Any], family: str | None) -> dict[str, Any]:
    """``values`` as the family draws them: FLUX.1's distilled guidance (flux_render_values), a flow family's
    CFG with its own scheduler (chroma_render_values), else as asked with no --g (the SD families)."""
    family_traits = traits(family or "")
    if family_traits is not None and family_traits.guidance == "distilled":
        return flux_render_values(values)
    if family_traits is not None and family_traits.objective == "flow":
        return chroma_render_values(values)
    return {**values, "guidance_scale": None}  # --g is FLUX.1's; an SD image does not use it


def sample_cfg(prompt: SamplePrompt, family: str | None) -> float:
    """The CFG a training of ``family`` drew ``prompt`` with: its --l, else the family's own (Chroma's 4),
    else Kohya's default."""
    family_traits = traits(family or "")
    if "cfg_scale" in prompt.model_fields_set or family_traits is None or family_traits.sample_cfg is None:
        return prompt.cfg_scale
    return family_traits.sample_cfg


def uses_t5(family: str | None) -> bool:
    """Whether the family encodes prompts with T5-XXL (so a preview takes its training's t5_options)."""
    family_traits = traits(family or "")
    return family_traits is not None and family_traits.t5xxl


def size_problem(family: str | None, value: int) -> str | None:
    """Why `value` pixels cannot be a side of the family's image (None: it can)."""
    multiple = SIZE_MULTIPLES.get(family or "", SD_SIZE_MULTIPLE)
    if value % multiple:
        return f"must be a multiple of {multiple} for {family}, got {value} (try {value - value % multiple})"
    return None


def sample_lines(config: Mapping[str, Any]) -> list[str]:
    """A training config's `sample_prompts` as lines (a stored config holds a list; a string is split)."""
    raw = config.get("sample_prompts") or []
    return raw.splitlines() if isinstance(raw, str) else [str(line) for line in raw]


def training_render_defaults(config: Mapping[str, Any], family: str | None) -> dict[str, Any]:
    """What a preview of a training job's LoRA draws when asked nothing: the size it trained at (its
    `resolution`; a config without one: the family's), and the settings of its first sample prompt (its
    --s, --l and --ss, else Kohya's defaults and the job's `sample_sampler`), within a preview's bounds.
    Not the base model's 512 and 30 steps: a LoRA trained small on a CPU is previewed as it was trained."""
    resolution = config.get("resolution")
    size = resolution if type(resolution) is int else FAMILY_SIZES.get(family or "", DEFAULT_SIZE)
    try:
        prompts = parse_prompt_lines(sample_lines(config))
    except ValueError:  # the API refused such lines at submission; an older row still draws
        prompts = []
    first = prompts[0] if prompts else SamplePrompt(prompt="")
    return {
        "width": size,  # TrainingConfig bounds it as a preview's size is bounded
        "height": size,
        "steps": min(first.steps, MAX_STEPS),
        "cfg_scale": min(sample_cfg(first, family), MAX_CFG),
        "sampler": first.sampler or normalize_sampler(str(config.get("sample_sampler") or DEFAULT_SAMPLER)),
        "guidance_scale": first.guidance_scale,
    }


def t5_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A T5 family's (uses_t5) training's T5 settings, so a preview encodes a prompt as its samples were."""
    return {
        "t5xxl_max_token_length": config.get("t5xxl_max_token_length"),
        "apply_t5_attn_mask": bool(config.get("apply_t5_attn_mask")),
    }


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
    # FLUX.1's and Chroma's T5 encoding, its first LoRA's training's (None: the variant's default, 512 dev /
    # 256 schnell / 512 Chroma)
    t5xxl_max_token_length: int | None = Field(None, ge=8, le=512)
    apply_t5_attn_mask: bool = False

    @property
    def denoising_steps(self) -> int:
        """The job's progress total: its progress counts denoising steps, not images."""
        return self.steps


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
    t5xxl_max_token_length: int | None = Field(None, ge=8, le=512)  # T5 families: the training's encoding
    apply_t5_attn_mask: bool = False

    @property
    def images(self) -> int:
        return sum(len(p.seeds) for p in self.prompts) * len(self.epochs) * len(self.weights)

    @property
    def denoising_steps(self) -> int:
        """The job's progress total: the steps of every image it draws. A weight-0 cell is drawn once per
        prompt and seed (the base model's) and shared by every epoch's row, so it counts once."""
        drawn = len(self.epochs) * sum(1 for w in self.weights if w != 0) + (0 in self.weights)
        return sum(len(p.seeds) * p.steps * drawn for p in self.prompts)
