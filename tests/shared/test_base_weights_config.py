"""fp8_base / base_quantization and vae_batch_size in the config, the importers and the VRAM estimate: choices
that cannot run together are errors at the field; Kohya's and sd-scripts' keys map with their meaning; the
estimate counts quantized weights exactly as the worker stores them, FLUX.1's transformer outside the
caching phase, and the configured VAE batch."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.kohya_import import import_kohya_config
from shared.config.sd_scripts_import import import_sd_scripts_config
from shared.config.spec import TrainingConfig
from shared.vram.estimate import Knobs, estimate, fit_card, knobs_of
from shared.vram.tables import FAMILY_MEMORY, QUANTIZED_LINEARS, T5_LINEARS, VAE_ENCODE_BYTES_PER_PIXEL
from tests.support.kohya_configs import flux_preset_config, guide_character_config


def _error_fields(**fields) -> list[tuple]:
    with pytest.raises(ValidationError) as caught:
        TrainingConfig(base_model="m", **fields)
    return [e["loc"] for e in caught.value.errors()]


def test_conflicting_and_unsupported_choices_name_their_field():
    assert _error_fields(fp8_base=True, base_quantization="int8") == [("base_quantization",)]
    assert _error_fields(base_quantization="nf4", network_type="loha") == [("base_quantization",)]
    assert _error_fields(fp8_base=True, dora_wd=True, network_alpha=32) == [("fp8_base",)]
    assert _error_fields(vae_batch_size=0) == [("vae_batch_size",)]
    ok = TrainingConfig(base_model="m", fp8_base=True, base_quantization="fp8", conv_dim=4)  # LoCon: PEFT
    assert ok.base_precision == "fp8"
    assert TrainingConfig(base_model="m", base_quantization="int8").base_precision == "int8"
    assert TrainingConfig(base_model="m").base_precision == "none"


def test_kohya_and_sd_scripts_keys_map_with_their_meaning():
    sd = import_kohya_config({**guide_character_config(), "vae_batch_size": 2, "fp8_base": True})
    assert (sd.config["vae_batch_size"], sd.config["fp8_base"]) == (2, True)
    unset = import_kohya_config(guide_character_config())  # its vae_batch_size 0: kohya_ss passes none
    assert unset.config["vae_batch_size"] is None  # lorabake's own choice by bucket size
    assert "vae_batch_size" not in {i["key"] for i in unset.to_dict()["ignored"]}
    flux = import_kohya_config({**flux_preset_config(), "vae_batch_size": 1}).config
    assert (flux["vae_batch_size"], flux["fp8_base"], flux["model_family"]) == (1, True, "flux1")
    toml = 'pretrained_model_name_or_path = "sd15.safetensors"\nvae_batch_size = 4\nfp8_base = true\n'
    result = import_sd_scripts_config(toml, None, "train_network").to_dict()
    assert (result["config"]["vae_batch_size"], result["config"]["fp8_base"]) == (4, True)


def _knobs(family: str, **fields) -> Knobs:
    config = TrainingConfig(base_model="m", mixed_precision="bf16", resolution=1024, **fields)
    return knobs_of(config, {"images": 4}, family)


def _parts(k: Knobs) -> dict[str, tuple[int, str]]:
    return {p.name: (p.bytes, p.phase) for p in estimate(k).parts}


@pytest.mark.parametrize(("precision", "per_weight", "per_row"), [("fp8", 1, 4), ("int8", 1, 5)])
def test_quantized_weights_are_counted_as_the_worker_stores_them(precision: str, per_weight, per_row):
    fields = {"fp8_base": True} if precision == "fp8" else {"base_quantization": precision}
    for family in ("sd1", "sdxl", "flux1"):
        params, (weights, rows) = FAMILY_MEMORY[family].denoiser, QUANTIZED_LINEARS[family]
        plain = _parts(_knobs(family))["denoiser weights"][0]
        quantized = _parts(_knobs(family, **fields))["denoiser weights"][0]
        assert plain == 2 * params
        assert quantized == 2 * (params - weights) + per_weight * weights + per_row * rows
    flux = _parts(_knobs("flux1", **fields))
    assert flux["denoiser weights"][0] <= 0.55 * _parts(_knobs("flux1"))["denoiser weights"][0]
    t5 = FAMILY_MEMORY["flux1"].text_encoders[1]
    expected_t5 = 2 * (t5.params - T5_LINEARS[0]) + per_weight * T5_LINEARS[0] + per_row * T5_LINEARS[1]
    assert flux["T5-XXL weights"] == (expected_t5, "caching")
    assert flux["CLIP-L weights"][0] == 2 * FAMILY_MEMORY["flux1"].text_encoders[0].params  # not quantized


def test_flux_transformer_is_not_on_the_card_while_captions_are_encoded():
    k = _knobs("flux1", gradient_checkpointing=True)
    parts = _parts(k)
    assert parts["denoiser weights"][1] == "training" and parts["T5-XXL weights"][1] == "caching"
    caching = estimate(k).phase_bytes("caching")
    assert caching < 16 << 30  # T5-XXL, CLIP-L and the VAE: no 24 GB card is out of reach while caching
    assert "fp8_base" in dict(fit_card(k, 24).changes or ())  # what makes FLUX.1 fit a 24 GB card


def test_the_caching_phase_encodes_the_configured_vae_batch():
    def encoding(**fields) -> int:
        return _parts(_knobs("sdxl", **fields))["VAE encoding (float32)"][0]

    one_image = 1024 * 1024 * VAE_ENCODE_BYTES_PER_PIXEL
    assert encoding() == one_image  # unset at 1024 px: one image at a time
    assert encoding(vae_batch_size=4) == 4 * one_image  # at most the images of the bucket (4 here)
    assert encoding(vae_batch_size=16) == 4 * one_image
