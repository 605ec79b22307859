"""How long a run will take, predicted from the runs this deployment measured (pure: no database here).

A finished run leaves one observation: what its speed depends on (family, GPU model, precision, network type
and rank, batch size and accumulation, the mean bucket area) and what was measured (optimizer steps per second
over the run, and the seconds outside the training loop: loading, caching, captioning, uploading).

A prediction uses the runs of the same family (different families do not predict each other: a FLUX step is
not an SD step at any scale), on the GPU model most of them ran on (the fleet's usual card, unless `gpu_model`
is asked for). Among those it keeps the closest: the most settings that match exactly, in the order precision,
network type, rank, batch size, and the most recent of those. Speed is compared as pixels per second
(steps/s x batch x accumulation x bucket area), so a run at 768 px predicts one at 512 px by the area ratio:
a first-order rule that holds well within a family (the attention's quadratic term makes it optimistic for
much larger areas than measured). With no run of the family, DEFAULT_SPEEDS (docs/operations.md) answers,
and the basis says so.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

NEAREST_RUNS = 10  # runs a prediction takes the median of
MATCHED_SETTINGS = ("precision", "network", "rank", "batch_size")  # compared in this order


@dataclass(frozen=True)
class RunFeatures:
    """What a training run's speed depends on, as far as the API can tell before it runs."""

    family: str | None
    precision: str
    network: str
    rank: int
    batch_size: int
    accumulation: int
    area: float  # mean bucket area in pixels, weighted by samples
    steps: int
    images: int

    @property
    def pixels_per_step(self) -> float:
        return self.batch_size * self.accumulation * self.area


@dataclass(frozen=True)
class Observation:
    features: RunFeatures
    gpu_model: str
    steps_per_second: float
    overhead_seconds: float  # the run's wall time outside its steps


@dataclass(frozen=True)
class DefaultSpeed:
    steps_per_second: float  # batch 1 at `area`, on the reference card
    area: float
    overhead_seconds: float  # model load, text-encoder and latent caching of a small dataset


# Rough figures for one 24 GB consumer card (RTX 4090 class), batch 1, bf16, at each family's native size,
# gathered from sd-scripts users' reports; they stand in until this deployment has measured a run.
DEFAULT_SPEEDS: dict[str, DefaultSpeed] = {
    "sd1": DefaultSpeed(4.0, 512 * 512, 60.0),
    "sd2": DefaultSpeed(2.5, 768 * 768, 75.0),
    "sdxl": DefaultSpeed(1.4, 1024 * 1024, 120.0),
    "flux1": DefaultSpeed(0.5, 1024 * 1024, 240.0),
    "chroma": DefaultSpeed(0.55, 1024 * 1024, 200.0),  # FLUX.1 less its modulation Linears and CLIP
}
FALLBACK_SPEED = DEFAULT_SPEEDS["sdxl"]  # a family nobody could name (a .ckpt not in the catalogue)

# Seconds per image and to load each captioner, on the same card: stand-ins until a caption job is measured.
DEFAULT_CAPTION_SECONDS: dict[str, tuple[float, float]] = {
    "blip": (0.15, 15.0),
    "wd14": (0.05, 10.0),
    "florence2": (0.4, 20.0),
    "qwen_vl": (2.5, 40.0),
    "joycaption": (3.0, 45.0),
}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    steps_per_second: float
    overhead_seconds: float
    basis: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "steps_per_second": round(self.steps_per_second, 4),
            "overhead_seconds": round(self.overhead_seconds, 1),
            "basis": self.basis,
        }


def _closeness(query: RunFeatures, seen: RunFeatures) -> tuple[bool, ...]:
    return tuple(getattr(query, name) == getattr(seen, name) for name in MATCHED_SETTINGS)


def predict_training(
    query: RunFeatures, history: list[Observation], gpu_model: str | None = None
) -> Estimate:
    """Seconds the run takes on a worker (history: newest first) with `gpu_model` (the card of the workers
    that would run it; when it has no run of the family, or is None, the card most runs were on). The basis
    names its source, the runs it took, the GPU model, and the settings those runs shared with this one."""
    same_family = [o for o in history if o.features.family == query.family]
    asked = gpu_model
    on_card = [o for o in same_family if o.gpu_model == gpu_model]
    if not on_card and same_family:  # no card asked for, or none of its runs: the card most runs were on
        gpu_model = Counter(o.gpu_model for o in same_family).most_common(1)[0][0]
        on_card = [o for o in same_family if o.gpu_model == gpu_model]
    if not on_card:
        return _default_training(query, gpu_model)
    best = max(_closeness(query, o.features) for o in on_card)
    nearest = [o for o in on_card if _closeness(query, o.features) == best][:NEAREST_RUNS]
    pixel_rate = statistics.median(o.steps_per_second * o.features.pixels_per_step for o in nearest)
    steps_per_second = pixel_rate / query.pixels_per_step
    overhead = statistics.median(o.overhead_seconds for o in nearest)
    basis = {
        "source": "history",
        "runs": len(nearest),
        "gpu_model": gpu_model,
        "matched": [name for name, same in zip(MATCHED_SETTINGS, best, strict=True) if same],
    }
    if asked is not None and asked != gpu_model:
        basis["note"] = f"no run of this family was measured on {asked} yet"
    return Estimate(overhead + query.steps / steps_per_second, steps_per_second, overhead, basis)


def _default_training(query: RunFeatures, gpu_model: str | None) -> Estimate:
    known = query.family in DEFAULT_SPEEDS
    speed = DEFAULT_SPEEDS[query.family] if known else FALLBACK_SPEED  # type: ignore[index]
    steps_per_second = speed.steps_per_second * speed.area / query.pixels_per_step
    basis = {
        "source": "default",
        "runs": 0,
        "gpu_model": gpu_model,
        "table": query.family if known else "sdxl",
        "note": "no run of this family was measured here yet; a typical 24 GB card at the family's default",
    }
    seconds = speed.overhead_seconds + query.steps / steps_per_second
    return Estimate(seconds, steps_per_second, speed.overhead_seconds, basis)


@dataclass(frozen=True)
class CaptionObservation:
    method: str
    gpu_model: str
    images: int
    seconds: float  # the caption job's wall time, load included


CaptionSource = Literal["history", "default"]


def predict_captioning(
    method: str, images: int, history: list[CaptionObservation], gpu_model: str | None = None
) -> dict[str, Any]:
    """Seconds to caption `images` with `method` (history: newest first), as {seconds, basis}: from the
    measured seconds per image of the last caption jobs of that method (on the usual GPU model), else the
    default table."""
    same = [o for o in history if o.method == method and o.images > 0]
    nearest = [o for o in same if o.gpu_model == gpu_model][:NEAREST_RUNS]
    if not nearest and same:  # no card asked for, or none of its runs: the card most runs were on
        gpu_model = Counter(o.gpu_model for o in same).most_common(1)[0][0]
        nearest = [o for o in same if o.gpu_model == gpu_model][:NEAREST_RUNS]
    if nearest:
        per_image = statistics.median(o.seconds / o.images for o in nearest)
        basis: dict[str, Any] = {"source": "history", "runs": len(nearest), "gpu_model": gpu_model}
        return {"seconds": round(per_image * images, 1), "basis": basis}
    per_image, load = DEFAULT_CAPTION_SECONDS.get(method, DEFAULT_CAPTION_SECONDS["florence2"])
    basis = {"source": "default", "runs": 0, "gpu_model": gpu_model, "method": method}
    return {"seconds": round(load + per_image * images, 1), "basis": basis}
