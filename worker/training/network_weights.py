"""`network_weights`: load a LoRA file into the run's freshly built network (sd-scripts' --network_weights).

The family says which live tensor each of the file's keys is (the inverse of how it saves them); the file
must have exactly those keys, shapes and alphas, so that the network starts as the file is, bit for bit
(save_precision float) or as its dtype rounds it. The API checked what a header tells
(shared/config/network_weights.py); the module names and shapes can be checked only here, against the
network the base model gave.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from shared.config.network_weights import FIELD, NetworkWeightsMismatch, network_kind

SHOWN = 3  # names listed per difference


def _module(key: str) -> str:
    return key.split(".", 1)[0]  # Kohya / LyCORIS module names have no dots; the tensor's role follows


def load_into(path: Path, targets: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> None:
    """Copy the file's tensors into `targets` (file key -> the live tensor it is), after checking that its
    modules, keys, shapes and alphas (file key -> the network's alpha) are the network's; a mismatch raises
    NetworkWeightsMismatch naming what differs and the config field behind it."""
    tensors = safetensors.torch.load_file(str(path), device="cpu")
    found: list[dict[str, Any]] = []

    def differ(field: str, message: str) -> None:
        found.append({"field": f"config.{field}", "message": message})

    ours, theirs = network_kind(targets), network_kind(tensors)
    if theirs != ours:
        differ("network_type", f"the file is a {theirs} network; this run trains {ours}")
    else:
        wanted = {_module(k) for k in (*targets, *alphas)}
        held = {_module(k) for k in tensors}
        missing, extra = sorted(wanted - held), sorted(held - wanted)
        if missing or extra:
            differ(
                "network_target",
                f"the file's modules are not this network's: {len(missing)} missing (e.g. "
                f"{missing[:SHOWN]}), {len(extra)} not in this network (e.g. {extra[:SHOWN]})",
            )
        absent = sorted(k for k in (*targets, *alphas) if k not in tensors and _module(k) in held)
        if absent:
            differ("network_type", f"the file lacks {len(absent)} tensors the network has: {absent[:SHOWN]}")
        shapes = [
            f"{k} is {list(tensors[k].shape)}, the network's {list(t.shape)}"
            for k, t in targets.items()
            if k in tensors and tensors[k].shape != t.shape
        ]
        if shapes:
            shown = "; ".join(shapes[:SHOWN])
            differ("network_dim", f"{len(shapes)} tensors differ in shape (rank): {shown}")
        alpha_diffs = [
            f"{k} is {tensors[k].item():g}, the network's {want:g}"
            for k, want in alphas.items()
            if k in tensors and not _same_alpha(tensors[k], want)
        ]
        if alpha_diffs:
            differ("network_alpha", f"{len(alpha_diffs)} alphas differ: {'; '.join(alpha_diffs[:SHOWN])}")
    if found:
        raise NetworkWeightsMismatch(
            "network_weights does not fit this run: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in found),
            details={"field": FIELD, "fields": found},
        )
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(tensors[key].to(target.device, target.dtype))


def _same_alpha(stored: torch.Tensor, want: float) -> bool:
    """sd-scripts stores alpha in the save dtype (fp16 rounds 0.3): equal once `want` is rounded alike."""
    return stored.numel() == 1 and stored.item() == torch.tensor(want, dtype=stored.dtype).item()
