"""A Kohya FLUX.1 LoRA file (sd-scripts' names, q/k/v fused: worker/training/flux_names.py) as PEFT adapters
on a FluxPipeline's diffusers modules, so previews set its multiplier with `set_adapters` as for SD and
`delete_adapters` gives the base model back bit for bit. Merging instead (flux_merge) would need a copy of
every touched base weight to undo each weight of a comparison: most of a 24 GB transformer.

A fused module's delta ``alpha / R * up @ down`` is split by its output rows over the diffusers parts
(to_q, to_k, to_v[, proj_mlp]). Part i: ``down`` whole and the rows of ``up`` that are its own, alpha and
rank R unchanged — exact for any fused file, sd-scripts' own (one shared down) included. When ``up`` is
block-diagonal in equal column blocks (what lorabake exports from split modules), part i takes just its
block: down_i, up_i, rank R / k, alpha / k — the trained adapters' own shapes, so the arithmetic (and a
weight-1 image) is the training's exactly (a zero block, a part never trained, adds an exact zero).
Diffusers' own Kohya FLUX reader cannot be used: it splits at FLUX.1's real widths only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from worker.training.export import TE1_PREFIX, _te_module_path, kohya_name
from worker.training.flux_merge import _known_modules, _plan

TE_COMPONENT = "text_encoder"  # CLIP-L (lora_te1_); T5 never gets a LoRA


@dataclass
class PeftLora:
    """One component's adapter: PEFT keys (``<module>.lora_A.weight``) and each module's (rank, alpha)."""

    tensors: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, float]]

    def add(self, module: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> None:
        self.tensors[f"{module}.lora_A.weight"] = down.contiguous()
        self.tensors[f"{module}.lora_B.weight"] = up.contiguous()
        self.shapes[module] = (down.shape[0], alpha)

    def config(self) -> dict[str, Any]:
        """LoraConfig's kwargs: exactly these modules (a list would also match a name's dotted suffix), the
        commonest rank and alpha, and an exact-name pattern for the others."""
        rank, alpha = Counter(self.shapes.values()).most_common(1)[0][0]
        patterns = {m: s for m, s in self.shapes.items() if s != (rank, alpha)}
        exact = {m: "^" + re.escape(m) for m in patterns}  # PEFT matches a pattern as a name's suffix
        return {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": "|".join(re.escape(m) for m in sorted(self.shapes)),  # PEFT: re.fullmatch
            "rank_pattern": {exact[m]: r for m, (r, a) in patterns.items() if r != rank},
            "alpha_pattern": {exact[m]: a for m, (r, a) in patterns.items() if a != alpha},
        }


def _block(up: torch.Tensor, parts: int, part: int, rows: slice) -> slice | None:
    """The columns part `part` reads when `up` is block-diagonal in `parts` equal blocks, else None."""
    rank = up.shape[1]
    if rank % parts:
        return None
    width = rank // parts
    columns = slice(part * width, (part + 1) * width)
    outside = torch.cat([up[rows, : columns.start], up[rows, columns.stop :]], dim=1)
    return columns if not outside.any() else None


def transformer_lora(transformer: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> PeftLora:
    """The file's ``lora_unet_`` modules on the transformer's diffusers Linears. ValueError naming the key
    for what flux_merge cannot place either (unknown modules, missing alpha, wrong shapes, DoRA keys)."""
    known = _known_modules(transformer)
    lora = PeftLora({}, {})
    for planned in _plan(transformer, tensors):
        paths = known[planned.name].parts
        alpha = float(tensors[f"{planned.name}.alpha"].item())  # as written (float32), not recomputed
        parts, start = len(paths), 0
        split: list[tuple[str, slice, slice | None]] = []
        for i, (path, linear) in enumerate(zip(paths, planned.linears, strict=True)):
            rows = slice(start, start + linear.out_features)
            start = rows.stop
            split.append((path, rows, _block(planned.up, parts, i, rows) if parts > 1 else None))
        if any(columns is None for _, _, columns in split):  # one part, or not block-diagonal
            for path, rows, _ in split:
                lora.add(path, planned.down, planned.up[rows], alpha)
            continue
        for path, rows, columns in split:
            assert columns is not None
            lora.add(path, planned.down[columns], planned.up[rows, columns], alpha / parts)
    return lora


def text_encoder_lora(text_encoder: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> PeftLora:
    """The file's ``lora_te1_`` modules on CLIP-L's Linears (names as worker/training/export.py writes
    them). ValueError naming a module CLIP-L does not have or one without its alpha."""
    names = {
        kohya_name(TE1_PREFIX, _te_module_path(name)): name
        for name, module in text_encoder.named_modules()
        if isinstance(module, torch.nn.Linear | LoraLayer)
    }
    lora = PeftLora({}, {})
    modules = sorted({key.split(".", 1)[0] for key in tensors})
    for module in modules:
        if module not in names:
            raise ValueError(f"{module}: no module of this FLUX.1 model's CLIP-L text encoder")
        try:
            down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
            alpha = float(tensors[f"{module}.alpha"].item())
        except KeyError as missing:
            raise ValueError(f"{missing.args[0]} is missing") from None
        lora.add(names[module], down, up, alpha)
    return lora


def load_kohya_flux_lora(pipe: Any, tensors: Mapping[str, torch.Tensor], adapter: str) -> None:
    """The file's transformer (and CLIP-L) modules as adapter `adapter` of a FluxPipeline (inactive weights
    until set_adapters). ValueError for a key it cannot place, before anything is loaded."""
    unet = {k: v for k, v in tensors.items() if not k.startswith(TE1_PREFIX)}
    te = {k: v for k, v in tensors.items() if k.startswith(TE1_PREFIX)}
    if te and pipe.text_encoder is None:
        raise ValueError(f"{next(iter(te))}: this pipeline has no CLIP-L text encoder to apply it to")
    transformer = transformer_lora(pipe.transformer, unet) if unet else None
    text = text_encoder_lora(pipe.text_encoder, te) if te else None
    if transformer is not None and transformer.tensors:
        pipe.transformer.load_lora_adapter(
            transformer.tensors,
            prefix=None,
            adapter_name=adapter,
            metadata=transformer.config(),
            _pipeline=pipe,
        )
    if text is not None:
        pipe.load_lora_into_text_encoder(
            {f"{TE_COMPONENT}.{k}": v for k, v in text.tensors.items()},
            None,
            pipe.text_encoder,
            prefix=TE_COMPONENT,
            adapter_name=adapter,
            metadata={f"{TE_COMPONENT}.{k}": v for k, v in text.config().items()},
        )
