"""Prints docs/operations.md's table of predicted peak GPU memory: each family's `character` preset at its
native resolution (batch 1, AdamW, 20 images), per weight precision, and what fits a 24, 16 and 12 GB card.
`python -m shared.vram.docs_table`."""

from __future__ import annotations

import json

from shared.config.presets import PRESETS, scaled_learning_rate
from shared.config.spec import TrainingConfig
from shared.model_families import TRAITS
from shared.vram.estimate import GIB, vram_plan
from shared.vram.tables import FAMILY_MEMORY

PRECISIONS = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def preset_config(family: str, mixed_precision: str) -> TrainingConfig:
    values = PRESETS["character"].fixed_values(family)
    side = TRAITS[family].native_resolution  # type: ignore[index]
    lr = scaled_learning_rate(1)
    return TrainingConfig(
        base_model="m",
        model_family=family,  # type: ignore[arg-type]
        **{**values, "resolution": side, "unet_lr": lr},
        **({} if family == "flux1" else {"text_encoder_lr": lr}),
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
    )


def _cell(card: dict) -> str:
    if card["fits"]:
        return "fits"
    if card["changes"] is None:  # no field lorabake has today makes it fit
        return f"no (at least {card['peak_bytes_after'] / GIB:.1f} GiB)"
    return "with " + ", ".join(f"{c['field']} {json.dumps(c['value'])}" for c in card["changes"])


def rows() -> list[str]:
    lines = [
        "| family (preset) | weights | peak | 24 GB | 16 GB | 12 GB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for family in FAMILY_MEMORY:  # the families with a table
        for label, precision in PRECISIONS.items():
            config = preset_config(family, precision)
            vram = vram_plan(config, {"images": 20, "reg_images": 0, "buckets": []}, family)
            assert vram is not None
            cells = [_cell(card) for card in vram["cards"]]
            setup = f"{TRAITS[family].label} {config.resolution} px, rank {config.network_dim}"  # type: ignore[index]
            if config.gradient_checkpointing:
                setup += ", checkpointing"
            peak = f"{vram['peak_bytes'] / GIB:.1f} GiB ({vram['peak_phase']})"
            lines.append(f"| {setup} | {label} | {peak} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
