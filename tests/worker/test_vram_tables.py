"""The VRAM estimate's weight part is exact: every number of shared/vram/tables.py counted again from the
shipped full-size SD1.5, SD2, SDXL and FLUX.1 configs on the meta device (nothing is allocated), and the
estimate's weight parts at each precision equal the bytes those models hold in that dtype."""

from __future__ import annotations

import pytest
import torch

from shared.config.spec import TrainingConfig
from shared.vram.estimate import estimate, knobs_of
from shared.vram.tables import CHROMA_MEMORY, FAMILY_MEMORY
from worker.devtools.vram_counts import lora_targets, meta_models, params
from worker.training.families.base import WEIGHT_DTYPES


def _bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(p.numel() * p.element_size() for p in model.to(dtype).parameters())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "flux1"])
def test_the_table_counts_the_full_size_models_exactly(family: str):
    models = meta_models(family)
    memory = FAMILY_MEMORY[family]
    assert params(models.denoiser) == memory.denoiser
    assert params(models.vae) == memory.vae
    assert [params(te) for te in models.text_encoders] == [te.params for te in memory.text_encoders]
    counted = lora_targets(family, models)
    assert counted["denoiser_lora"] == memory.denoiser_lora
    assert counted["text_encoder_lora"] == [te.lora for te in memory.text_encoders]
    if family == "flux1":
        assert counted["blocks"] == memory.blocks
    else:
        assert (counted["locon_linear"], counted["locon_conv"]) == (memory.locon_linear, memory.locon_conv)

    # the weight parts at each precision: the models' own bytes in the engine's dtypes (VAE float32)
    for precision in ("no", "fp16", "bf16"):
        config = TrainingConfig(base_model="m", mixed_precision=precision)
        parts = {p.name: p.bytes for p in estimate(knobs_of(config, {"images": 1}, family)).parts}
        dtype = WEIGHT_DTYPES[precision]
        assert parts["denoiser weights"] == _bytes(models.denoiser, dtype), precision
        assert parts["VAE weights (float32)"] == _bytes(models.vae, torch.float32)
        for table, te in zip(memory.text_encoders, models.text_encoders, strict=True):
            assert parts[f"{table.name} weights"] == _bytes(te, dtype), (precision, table.name)


def test_the_chroma_table_counts_chroma1_hd_exactly():
    models = meta_models("chroma")
    assert params(models.denoiser) == CHROMA_MEMORY.denoiser == 8_899_983_424
    assert params(models.vae) == CHROMA_MEMORY.vae
    assert [params(te) for te in models.text_encoders] == [te.params for te in CHROMA_MEMORY.text_encoders]
    counted = lora_targets("chroma", models)
    # 418 diffusers modules: what the exporter fuses into sd-scripts' 228 (flux_names' CHROMA_* tables)
    assert counted["denoiser_lora"] == CHROMA_MEMORY.denoiser_lora
    assert counted["blocks"] == CHROMA_MEMORY.blocks
    assert counted["text_encoder_lora"] == [None]  # T5 never gets a LoRA; there is no CLIP-L
