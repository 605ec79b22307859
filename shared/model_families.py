"""The model families lorabake trains, in one table: the config schema, the catalogue, the plan, presets,
previews, the API's schemas and the web page (through GET /v1/presets) all read it. Adding a family starts
with a row here; its detection rules live in shared/catalogue/, its training in worker/training/families/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

ModelFamily = Literal["sd1", "sd2", "sdxl", "flux1", "chroma"]


@dataclass(frozen=True)
class FamilyTraits:
    label: str  # how people name it
    objective: Literal["ddpm", "flow"]  # DDPM noise (epsilon / v) or rectified flow
    native_resolution: int  # the side it was trained at: presets' and previews' default size
    size_multiple: int  # image sides must be multiples of this (VAE factor x patch size)
    t5xxl: bool = False  # a T5-XXL text encoder: t5xxl_max_token_length / apply_t5_attn_mask apply
    # How an image is guided: "cfg" (classifier-free guidance at --l against --n, any sampler for the SD
    # families) or "distilled" (FLUX.1 dev's guidance embedding at --g; no CFG, no negative prompt).
    guidance: Literal["cfg", "distilled"] = "cfg"
    sample_cfg: float | None = None  # CFG of its samples and previews without --l (None: Kohya's 7.5)


TRAITS: dict[ModelFamily, FamilyTraits] = {
    "sd1": FamilyTraits("SD1.x", "ddpm", 512, 8),
    "sd2": FamilyTraits("SD2.x", "ddpm", 512, 8),
    "sdxl": FamilyTraits("SDXL", "ddpm", 1024, 8),
    "flux1": FamilyTraits("FLUX.1", "flow", 1024, 16, t5xxl=True, guidance="distilled"),  # 8 x 2x2 packed
    # FLUX.1-schnell derived: the same VAE and packing; T5 alone, CFG at 4 (sd-scripts' docs, ai-toolkit)
    "chroma": FamilyTraits("Chroma", "flow", 1024, 16, t5xxl=True, sample_cfg=4.0),
}
FAMILIES: tuple[ModelFamily, ...] = get_args(ModelFamily)
FLOW_FAMILIES = frozenset(f for f in FAMILIES if TRAITS[f].objective == "flow")


def traits(family: str) -> FamilyTraits | None:
    return TRAITS.get(family)  # type: ignore[call-overload]
