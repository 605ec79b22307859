"""FLUX.1 presets: the values the anchor trainers ship for a FLUX.1 LoRA (sources: docs/presets.md).

The guide behind the SD presets is about SD1.x/SDXL; for FLUX.1 the values come from kohya-ss/sd-scripts
(docs/flux_train_network.md), ostris/ai-toolkit (config/examples/train_lora_flux_24gb.yaml) and
bghira/SimpleTuner (documentation/quickstart/FLUX.md). None of them ships a per-subject recipe, so the three
presets set the same values on FLUX.1. Every field here applies to flux1 (family_conflicts stays empty).
"""

from __future__ import annotations

from typing import Any

FLUX_RANK = 16  # ai-toolkit `linear: 16`, sd-scripts' docs `--network_dim=16`, SimpleTuner's `lora_rank: 16`
FLUX_LR = 1e-4  # all three; sd-scripts trains it at batch 2 and ai-toolkit at batch 1, so it is not scaled

# The same for every dataset; a field the client set wins, as for SD.
FLUX_VALUES: dict[str, Any] = {
    "network_dim": FLUX_RANK,
    # ai-toolkit's `linear_alpha: 16` (alpha = rank, as the SD guide keeps them); sd-scripts' alpha 1 would
    # scale every update by 1/16 at the same learning rate.
    "network_alpha": float(FLUX_RANK),
    "resolution": 1024,  # sd-scripts' dataset_1024 example, SimpleTuner "Flux is a 1024px model"
    "save_every_n_epochs": 1,  # sd-scripts' docs `--save_every_n_epochs=1`
    "save_precision": "fp16",  # ai-toolkit `save: dtype: float16`
    "lr_scheduler": "constant",  # sd-scripts' docs `--lr_scheduler="constant"`; ai-toolkit's default
    "gradient_checkpointing": True,  # all three ("need the on unless you have a ton of vram")
    "network_train_unet_only": True,  # sd-scripts' FLUX.1-only LoRA; ai-toolkit `train_text_encoder: false`
    # sd-scripts' "Recommended Settings" (docs/flux_train_network.md 6.2)
    "timestep_sampling": "shift",
    "discrete_flow_shift": 3.1582,
    "model_prediction_type": "raw",
    "guidance_scale": 1.0,  # also SimpleTuner's default ("the most compatible mode")
}

# Chroma: the same anchors' values (ai-toolkit config/examples/train_lora_chroma_24gb.yaml: linear 16, alpha
# 16, lr 1e-4, float16 saves, gradient checkpointing, train_text_encoder false) with sd-scripts' Chroma
# settings (docs/flux_train_network.md: `--timestep_sampling sigmoid --model_prediction_type raw
# --guidance_scale 0.0 --apply_t5_attn_mask`).
CHROMA_VALUES: dict[str, Any] = {
    **{k: v for k, v in FLUX_VALUES.items() if k not in ("discrete_flow_shift", "guidance_scale")},
    "timestep_sampling": "sigmoid",
    "guidance_scale": 0.0,
    "apply_t5_attn_mask": True,
}

# Filled from the dataset and the rest of the config (presets.apply_preset), and how.
FLUX_COMPUTED: dict[str, str] = {
    "unet_lr": f"{FLUX_LR:g} with AdamW or AdamW8bit, whatever the batch (the anchors' rate at batches 1-2)",
}
