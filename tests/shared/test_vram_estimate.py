"""The VRAM estimate (shared/vram/estimate.py), pure: its parts add up to the peak, the fields that should
lower a part lower it, and the changes it suggests for a card make the config fit and are the least that
do."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config.spec import TrainingConfig
from shared.vram.estimate import GIB, estimate, fit_card, knobs_of, vram_plan

PLAN = {"images": 20, "reg_images": 0, "buckets": []}


def parts(family: str, **fields: Any) -> dict[str, int]:
    config = TrainingConfig(base_model="m", **fields)
    return {p.name: p.bytes for p in estimate(knobs_of(config, PLAN, family)).parts}


def peak(family: str, **fields: Any) -> int:
    return vram_plan(TrainingConfig(base_model="m", **fields), PLAN, family)["peak_bytes"]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "flux1", "chroma"])
def test_the_parts_add_up_to_the_peak_of_the_two_phases(family: str):
    vram = vram_plan(TrainingConfig(base_model="m", resolution=1024), PLAN, family)
    sums = {
        phase: sum(p["bytes"] for p in vram["parts"] if p["phase"] in ("both", phase))
        for phase in ("caching", "training")
    }
    assert vram["peak_bytes"] == max(sums.values()) and sums[vram["peak_phase"]] == vram["peak_bytes"]
    assert all(p["bytes"] > 0 for p in vram["parts"])
    assert [c["gb"] for c in vram["cards"]] == [24, 16, 12]
    for card in vram["cards"]:
        assert card["fits"] == (vram["peak_bytes"] <= card["gb"] * GIB)


def test_checkpointing_and_a_smaller_batch_lower_the_activations():
    base = parts("sdxl", resolution=1024, batch_size=4)
    assert parts("sdxl", resolution=1024, batch_size=4, gradient_checkpointing=True)["activations"] < (
        base["activations"] / 5
    )
    assert parts("sdxl", resolution=1024, batch_size=1)["activations"] < base["activations"] / 3
    assert parts("sdxl", resolution=512, batch_size=4)["activations"] < base["activations"] / 3
    # float32 training: weights and activations twice the 16-bit ones
    full = parts("sdxl", resolution=1024, batch_size=4, mixed_precision="no")
    assert full["denoiser weights"] == 2 * base["denoiser weights"]
    assert full["activations"] == pytest.approx(2 * base["activations"], rel=1e-6)


def test_optimizer_state_follows_the_optimizer():
    adamw = parts("sd1", network_dim=64, network_alpha=64)
    lora = adamw["LoRA parameters (float32)"] // 4
    assert adamw["optimizer state (AdamW)"] == 8 * lora  # two float32 states
    assert parts("sd1", network_dim=64, network_alpha=64, optimizer="AdamW8bit")[
        "optimizer state (AdamW8bit)"
    ] == (2 * lora)
    assert (
        parts("sd1", network_dim=64, network_alpha=64, optimizer="Lion")["optimizer state (Lion)"] == 4 * lora
    )
    prodigy = parts(
        "sd1", network_dim=64, network_alpha=64, optimizer="Prodigy", unet_lr=1.0, text_encoder_lr=1.0
    )
    assert prodigy["optimizer state (Prodigy)"] == 16 * lora  # exp_avg, exp_avg_sq, s, p0
    # a text-encoder LoRA is counted only when it trains
    assert parts("sd1", text_encoder_lr=0)["LoRA parameters (float32)"] < adamw["LoRA parameters (float32)"]


def test_flux_drops_its_text_encoders_after_caching_unless_clip_trains():
    config = TrainingConfig(base_model="m", resolution=1024, gradient_checkpointing=True)
    phases = {p.name: p.phase for p in estimate(knobs_of(config, PLAN, "flux1")).parts}
    assert phases["T5-XXL weights"] == phases["CLIP-L weights"] == "caching"
    clip = config.model_copy(update={"network_train_unet_only": False})
    assert {p.name: p.phase for p in estimate(knobs_of(clip, PLAN, "flux1")).parts}[
        "T5-XXL weights"
    ] == "both"
    # fewer blocks trained: 4 double blocks' LoRA, 14 modules of width 153,600 each block, rank 32, float32
    some = parts("flux1", train_double_block_indices="0-3", train_single_block_indices="none")
    assert some["LoRA parameters (float32)"] == 4 * 153_600 * 32 * 4


def test_chroma_caches_t5_alone_before_its_transformer_reaches_the_card():
    """Chroma (FluxModel's order): T5-XXL only while caching, the transformer only while training, no CLIP-L;
    its job's T5 length sizes the cached text."""
    config = TrainingConfig(base_model="m", resolution=1024, gradient_checkpointing=True)
    phases = {p.name: p.phase for p in estimate(knobs_of(config, PLAN, "chroma")).parts}
    assert phases["T5-XXL weights"] == "caching" and phases["denoiser weights"] == "training"
    assert not any("CLIP" in name for name in phases)
    short = parts("chroma", resolution=1024, t5xxl_max_token_length=256)["cached latents and text"]
    assert parts("chroma", resolution=1024)["cached latents and text"] > short
    assert peak("chroma", resolution=1024) < peak("flux1", resolution=1024)  # 8.9 B parameters, not 11.9 B


def _applied(config: TrainingConfig, changes: tuple[tuple[str, Any], ...]) -> TrainingConfig:
    return TrainingConfig(**{**config.model_dump(), **dict(changes)})


@pytest.mark.parametrize(
    ("family", "fields", "card"),
    [
        ("sdxl", {"resolution": 1024, "network_dim": 128, "network_alpha": 128, "batch_size": 4}, 24),
        ("sdxl", {"resolution": 1024, "network_dim": 128, "network_alpha": 128, "batch_size": 4}, 16),
        ("sd1", {"resolution": 768, "batch_size": 16, "mixed_precision": "no"}, 12),
    ],
)
def test_suggested_changes_make_it_fit_and_are_the_least_that_do(family, fields, card):
    config = TrainingConfig(base_model="m", **fields)
    k = knobs_of(config, PLAN, family)
    assert estimate(k).peak > card * GIB
    fit = fit_card(k, card)
    assert not fit.fits and fit.changes
    changed = _applied(config, fit.changes)
    assert vram_plan(changed, PLAN, family)["peak_bytes"] <= card * GIB
    assert fit.message.startswith(f"fits {card} GB with ")
    for i in range(len(fit.changes)):  # leaving any one change out does not fit
        fewer = fit.changes[:i] + fit.changes[i + 1 :]
        assert vram_plan(_applied(config, fewer), PLAN, family)["peak_bytes"] > card * GIB, fit.changes[i]
    batch = dict(fit.changes).get("batch_size")
    if batch is not None:  # the largest batch that fits
        bigger = {**dict(fit.changes), "batch_size": batch * 2}
        assert vram_plan(_applied(config, tuple(bigger.items())), PLAN, family)["peak_bytes"] > card * GIB


def test_a_config_that_nothing_makes_fit_says_what_it_needs_and_unknown_families_have_none():
    k = knobs_of(TrainingConfig(base_model="m", resolution=1024), PLAN, "flux1")
    fit = fit_card(k, 12)  # FLUX.1's transformer alone is 22 GiB in 16 bits
    assert fit.changes is None and "does not fit 12 GB" in fit.message and "GiB" in fit.message
    assert vram_plan(TrainingConfig(base_model="m"), PLAN, None) is None
