"""Which fields apply to which family (shared/config/family_options.py): sizes at the family's multiple, an
explicit family's conflicts located at their fields, the catalogue's family checked as the API checks it,
and jobs routed by family."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.family_options import (
    FLOW_DEFAULTS,
    FLOW_ONLY,
    checked_family,
    family_conflicts,
    family_fields,
    size_multiple,
)
from shared.config.spec import TrainingConfig
from shared.errors import LorabakeError
from shared.jobs.routing import queue_for
from shared.settings import Settings


def config(**fields) -> TrainingConfig:
    return TrainingConfig.model_validate({"base_model": "flux1-dev.safetensors", **fields})


def test_flux1_sizes_are_multiples_of_16_and_sd_sizes_of_8():
    assert (size_multiple("flux1"), size_multiple("sdxl"), size_multiple(None)) == (16, 8, 8)
    odd = config(resolution=520, min_bucket_reso=256, max_bucket_reso=1040, bucket_reso_steps=8)
    assert [f for f, _ in family_conflicts(odd, "flux1")] == ["resolution", "bucket_reso_steps"]
    assert family_conflicts(odd, "sdxl") == []  # SD: as before
    unbucketed = config(resolution=512, enable_bucket=False, bucket_reso_steps=8)
    assert family_conflicts(unbucketed, "flux1") == []  # the steps are unused without buckets
    assert family_conflicts(config(), "flux1") == []  # the defaults fit (512, steps 64)


def test_an_explicit_family_locates_each_conflict_at_its_field():
    with pytest.raises(ValidationError) as caught:
        config(model_family="flux1", min_snr_gamma=5, clip_skip=2, resolution=520)
    errors = {e["loc"]: e["msg"] for e in caught.value.errors()}
    assert set(errors) == {("resolution",), ("min_snr_gamma",), ("clip_skip",)}
    assert "multiple of 16 px" in errors[("resolution",)]
    with pytest.raises(ValidationError) as caught:
        config(model_family="sd1", timestep_sampling="shift")
    assert [e["loc"] for e in caught.value.errors()] == [("timestep_sampling",)]


def refusal(cfg: TrainingConfig, catalogue: str | None) -> LorabakeError:
    with pytest.raises(LorabakeError) as caught:
        checked_family(cfg, catalogue)
    assert (caught.value.status_code, caught.value.code) == (422, "invalid_config")
    return caught.value


def test_the_catalogues_family_checks_an_auto_config_and_must_match_an_explicit_one():
    assert checked_family(config(), "flux1") == "flux1"
    assert checked_family(config(), None) is None  # not known yet (a .ckpt): the worker checks
    assert checked_family(config(model_family="sdxl"), None) == "sdxl"
    error = refusal(config(noise_offset=0.05, v_parameterization=True), "flux1")
    assert [f["field"] for f in error.details["fields"]] == [
        "config.v_parameterization",
        "config.noise_offset",
    ]
    error = refusal(config(guidance_scale=1.0), "sd2")
    assert [f["field"] for f in error.details["fields"]] == ["config.guidance_scale"]
    error = refusal(config(model_family="sdxl"), "flux1")
    assert [f["field"] for f in error.details["fields"]] == ["config.model_family"]
    assert error.details["catalogue_family"] == "flux1"


def test_flux1_jobs_follow_their_route():
    settings = Settings(queue_routes={"flux1": "flux-80gb", "sdxl": "sdxl-24gb"})
    assert queue_for(settings, "flux1", None, []) == "flux-80gb"
    assert queue_for(settings, "sd1", None, []) == settings.queue_name
    assert queue_for(settings, "flux1", "sdxl-24gb", []) == "sdxl-24gb"  # a queue asked for wins


def test_the_flow_defaults_a_form_shows_are_what_the_worker_trains_with():
    """FLOW_DEFAULTS (GET /v1/presets' families.flux1.defaults, the page's placeholders) in words, against
    the worker's own defaults for an unset field."""
    from worker.training import flow_matching
    from worker.training.families import flux

    shown = FLOW_DEFAULTS
    drawn = flow_matching.TimestepSampling()
    assert shown["timestep_sampling"] == drawn.method
    assert shown["weighting_scheme"] == drawn.weighting_scheme
    for field in ("sigmoid_scale", "discrete_flow_shift", "logit_mean", "logit_std", "mode_scale"):
        assert float(shown[field]) == getattr(drawn, field), field
    assert float(shown["guidance_scale"]) == flux.DEFAULT_GUIDANCE
    assert (
        shown["t5xxl_max_token_length"] == f"{flux.DEV_T5_TOKENS} (dev), {flux.SCHNELL_T5_TOKENS} (schnell)"
    )
    unset = config()
    assert flux.timestep_options(unset) == drawn and not flux.trains_clip(unset)
    assert shown["network_train_unet_only"] == "true" and shown["apply_t5_attn_mask"] == "false"
    assert set(family_fields("flux1").defaults) <= set(family_fields("flux1").fields)
    assert not set(family_fields("flux1").fields) & set(family_fields("flux1").not_applicable)
    assert set(family_fields("sdxl").not_applicable) == set(FLOW_ONLY)
