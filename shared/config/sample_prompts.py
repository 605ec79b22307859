"""Kohya's sample-prompt lines and sampler names, parsed and checked without torch.

A line is ``prompt --n negative --w 512 --h 512 --d seed --l cfg --s steps --ss sampler`` (flags in any order,
case-insensitive, each one optional), as sd-scripts reads it in ``train_util.line_to_prompt_dict``: the line
is split on `` --``, the first piece is the prompt, the others are ``flag value``. A line that is blank or
starts with ``#`` is skipped. Defaults are Kohya's (``sample_image_inference``): 512x512, CFG 7.5, 30 steps,
the run's ``sample_sampler``. Sizes are rounded down to a multiple of 8, as Kohya does.

Where Kohya silently ignores a flag it cannot read (``--w big``, ``--x 1``) or clamps a value, this module
raises a ValueError that names the line and the flag, so the API answers 422 before any work is done.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # a diffusers scheduler class name, built from the model's own scheduler config
    options: tuple[tuple[str, object], ...] = ()  # extra scheduler config
    a1111_name: str = ""  # the name AUTOMATIC1111 shows (PNG "parameters"), where one matches
    requires: str | None = None  # a package the scheduler needs beyond diffusers (checked by the worker)


_DPMPP_2M = Sampler("DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"),), "DPM++ 2M")

# Kohya's `--sample_sampler` choices (train_util.get_my_scheduler maps them the same way), then the A1111
# names of the DPM++ 2M pair users ask for most.
SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler("DDIMScheduler", (), "DDIM"),
    # PLMS without the Runge-Kutta warm-up, as SD1.x's own scheduler config has it (and any step count works)
    "pndm": Sampler("PNDMScheduler", (("skip_prk_steps", True),), "PLMS"),
    "lms": Sampler("LMSDiscreteScheduler", (), "LMS", requires="scipy"),
    "k_lms": Sampler("LMSDiscreteScheduler", (), "LMS", requires="scipy"),
    "euler": Sampler("EulerDiscreteScheduler", (), "Euler"),
    "k_euler": Sampler("EulerDiscreteScheduler", (), "Euler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", (), "Euler a"),
    "k_euler_a": Sampler("EulerAncestralDiscreteScheduler", (), "Euler a"),
    "heun": Sampler("HeunDiscreteScheduler", (), "Heun"),
    "dpm_2": Sampler("KDPM2DiscreteScheduler", (), "DPM2"),
    "k_dpm_2": Sampler("KDPM2DiscreteScheduler", (), "DPM2"),
    "dpm_2_a": Sampler("KDPM2AncestralDiscreteScheduler", (), "DPM2 a"),
    "k_dpm_2_a": Sampler("KDPM2AncestralDiscreteScheduler", (), "DPM2 a"),
    "dpmsolver": Sampler(  # diffusers refuses this (deprecated) algorithm's default final sigma of zero
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver"), ("final_sigmas_type", "sigma_min")),
        "DPM-Solver 2M",
    ),
    "dpmsolver++": _DPMPP_2M,
    "dpmsingle": Sampler("DPMSolverSinglestepScheduler", (("lower_order_final", True),), "DPM++ 2S"),
    "dpm++_2m": _DPMPP_2M,
    "dpm++_2m_karras": Sampler(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("use_karras_sigmas", True)),
        "DPM++ 2M Karras",
    ),
}
# Spellings from A1111's menu, after lower-casing and turning spaces into "_".
_ALIASES = {"dpm2": "dpm_2", "dpm2_a": "dpm_2_a", "plms": "pndm", "dpm++_2s": "dpmsingle"}
DEFAULT_SAMPLER = "ddim"  # Kohya's --sample_sampler default

# Kohya's defaults in sample_image_inference.
DEFAULT_SIZE = 512
DEFAULT_CFG = 7.5
DEFAULT_STEPS = 30

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 1000  # Kohya clamps --s to 1..1000
MAX_CFG = 50.0
MAX_SEED = 2**32 - 1


def normalize_sampler(name: str) -> str:
    """A Kohya sampler name (or A1111's spelling of one) as its key in SAMPLERS; ValueError if unknown."""
    key = re.sub(r"[\s-]+", "_", str(name).strip().lower())
    key = _ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}")
    return key


class SamplePrompt(BaseModel):
    """One parsed line. ``seed`` None: derived from the run's seed (see derive_seed); ``sampler`` None: the
    config's ``sample_sampler``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    seed: int | None = None
    cfg_scale: float = DEFAULT_CFG
    steps: int = DEFAULT_STEPS
    sampler: str | None = None
    guidance_scale: float | None = None  # --g: FLUX.1 dev's distilled guidance (sd-scripts' flag)


_FLAG = re.compile(r"^(\S+)(?:\s+(.*))?$", re.DOTALL)
_INT = re.compile(r"^\d+$")
_FLOAT = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")
FLAGS = {
    "n": "negative prompt",
    "w": "width",
    "h": "height",
    "d": "seed",
    "l": "CFG scale",
    "g": "guidance scale",
    "s": "sampling steps",
    "ss": "sampler",
}


def _short(line: str) -> str:
    return line if len(line) <= 80 else line[:77] + "..."


def _int(flag: str, value: str, low: int, high: int) -> int:
    if not _INT.match(value):
        raise ValueError(f"--{flag} ({FLAGS[flag]}) needs a whole number, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"--{flag} ({FLAGS[flag]}) must be {low}..{high}, got {number}")
    return number


def parse_prompt_line(line: str) -> SamplePrompt | None:
    """One Kohya prompt line as a SamplePrompt; None for a blank or ``#`` comment line. Raises ValueError
    naming the line and the flag for a value Kohya could not use or an unknown flag."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        return _parse(text)
    except ValueError as exc:
        raise ValueError(f"sample prompt {_short(text)!r}: {exc}") from None


def _parse(text: str) -> SamplePrompt:
    pieces = (" " + text if text.startswith("--") else text).split(" --")
    fields: dict[str, object] = {"prompt": pieces[0].strip()}
    for piece in pieces[1:]:
        match = _FLAG.match(piece.strip())
        if not match:
            raise ValueError("a '--' with no flag name")
        flag, value = match.group(1).lower(), (match.group(2) or "").strip()
        if flag not in FLAGS:
            known = ", ".join(f"--{f}" for f in FLAGS)
            raise ValueError(f"unknown flag --{match.group(1)} (this service reads {known})")
        if flag == "n":
            fields["negative_prompt"] = value  # may be empty: an explicitly empty negative prompt
            continue
        if not value:
            raise ValueError(f"--{flag} ({FLAGS[flag]}) needs a value")
        if flag in ("w", "h"):
            size = _int(flag, value, MIN_SIZE, MAX_SIZE)
            fields["width" if flag == "w" else "height"] = size - size % 8  # Kohya rounds down to /8
        elif flag == "d":
            fields["seed"] = _int(flag, value, 0, MAX_SEED)
        elif flag == "s":
            fields["steps"] = _int(flag, value, 1, MAX_STEPS)
        elif flag == "l":
            if not _FLOAT.match(value):
                raise ValueError(f"--l (CFG scale) needs a number, got {value!r}")
            cfg = float(value)
            if cfg > MAX_CFG:
                raise ValueError(f"--l (CFG scale) must be 0..{MAX_CFG:g}, got {value}")
            fields["cfg_scale"] = cfg
        elif flag == "g":
            if not _FLOAT.match(value) or float(value) > MAX_CFG:
                raise ValueError(f"--g (guidance scale) needs a number 0..{MAX_CFG:g}, got {value!r}")
            fields["guidance_scale"] = float(value)
        else:  # ss
            try:
                fields["sampler"] = normalize_sampler(value)
            except ValueError as exc:
                raise ValueError(f"--ss: {exc}") from None
    return SamplePrompt.model_validate(fields)


def parse_prompt_lines(lines: Iterable[str]) -> list[SamplePrompt]:
    """The prompts of a Kohya prompt file (or the config's list), comments and blank lines left out; a
    prompt's index in this list is the ``_NN`` in its sample file names, as Kohya numbers them."""
    return [p for p in map(parse_prompt_line, lines) if p is not None]


def derive_seed(run_seed: int, prompt_index: int) -> int:
    """The seed of a prompt without ``--d``: fixed per run and prompt, so every sample of one prompt along a
    run starts from the same noise (Kohya draws a fresh random seed each time instead)."""
    digest = hashlib.sha256(f"lorabake-sample:{run_seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def a1111_parameters(
    prompt: SamplePrompt, *, seed: int, sampler: str, extra: dict[str, object] | None = None
) -> str:
    """The PNG ``parameters`` text AUTOMATIC1111 writes (and reads back in PNG Info)."""
    lines = [prompt.prompt]
    if prompt.negative_prompt:
        lines.append(f"Negative prompt: {prompt.negative_prompt}")
    settings: dict[str, object] = {
        "Steps": prompt.steps,
        "Sampler": SAMPLERS[sampler].a1111_name or sampler,
        "CFG scale": f"{prompt.cfg_scale:g}",
        "Seed": seed,
        "Size": f"{prompt.width}x{prompt.height}",
        **(extra or {}),
    }
    if prompt.guidance_scale is not None:  # Forge's name for FLUX's distilled guidance
        settings["Distilled CFG Scale"] = f"{prompt.guidance_scale:g}"
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items()))
    return "\n".join(lines)
