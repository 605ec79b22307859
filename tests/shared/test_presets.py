"""Presets encode the guide's numbers; explicit fields win; plan warnings fire when the guide would."""

from __future__ import annotations

import pytest

from shared.config.family_options import family_conflicts
from shared.config.flux_presets import FLUX_VALUES
from shared.config.plan import compute_plan
from shared.config.presets import (
    EPOCH_HIGH,
    EPOCH_LOW,
    MAX_STEPS,
    STEPS_HIGH,
    STEPS_LOW,
    apply_preset,
    checkpoint_schedule,
    choose_epochs,
    plan_run,
    plan_warnings,
    scaled_learning_rate,
)
from shared.config.spec import TrainingConfig
from shared.datasets.layout import detect_layout
from shared.errors import LorabakeError


def lisa_layout(images: int = 34, repeats: int = 6, reg: int = 0):
    files = [f"img/{repeats}_lisabp woman/{i:03d}.png" for i in range(images)]
    files += [f"reg/1_woman/r{i:03d}.png" for i in range(reg)]
    return detect_layout(files)


def flat_layout(images: int = 20, repeats: int = 1):
    return detect_layout([f"{i:03d}.png" for i in range(images)], default_repeats=repeats)


def config(**fields) -> TrainingConfig:
    return TrainingConfig.model_validate({"base_model": "sd15.safetensors", **fields})


def codes(warnings) -> set[str]:
    return {w["code"] for w in warnings}


# --- the guide's arithmetic ---------------------------------------------------------------------------------


def test_the_guides_example_34_images_6_repeats_10_epochs_is_2040_steps():
    run = plan_run(config(epochs=10, batch_size=1), lisa_layout())
    assert (run.plan.steps_per_epoch, run.plan.total_steps) == (204, 2040)
    # and the character preset picks the guide's own 10 epochs for it, keeping the folder's 6 repeats
    run = plan_run(config(preset="character"), lisa_layout())
    assert run.plan.repeats == 6 and run.config.epochs == 10 and run.plan.total_steps == 2040
    assert run.plan.saved_epochs == list(range(1, 11))  # a LoRA every epoch, every 204 steps
    steps = [c["step"] for c in checkpoint_schedule(run.config, run.plan)]
    assert steps == [204 * e for e in range(1, 11)]


def test_flat_dataset_gets_repeats_for_a_200_400_step_epoch_and_a_1500_3000_total():
    run = plan_run(config(preset="character"), flat_layout(20))
    assert EPOCH_LOW <= run.plan.steps_per_epoch <= EPOCH_HIGH
    assert STEPS_LOW <= run.plan.total_steps <= STEPS_HIGH
    assert run.config.repeats == 10 and run.layout.subsets[0].repeats == 10  # the layout follows the config
    assert (run.config.epochs, run.plan.total_steps) == (10, 2000)
    assert run.config.save_every_n_epochs == 1 and run.config.save_precision == "fp16"
    assert (run.config.network_dim, run.config.network_alpha) == (128, 128)
    assert "epoch_length" not in codes(run.warnings) and "too_many_steps" not in codes(run.warnings)


@pytest.mark.parametrize("images", [1, 3, 7, 20, 34, 55, 150, 399, 401, 1000])
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
@pytest.mark.parametrize("preset", ["character", "style", "concept"])
def test_presets_stay_in_the_guides_ranges(images, batch, preset):
    run = plan_run(config(preset=preset, batch_size=batch), flat_layout(images))
    spe = run.plan.steps_per_epoch
    assert run.plan.total_steps <= MAX_STEPS
    if run.config.repeats > 1:  # repeats were needed: the epoch is 200-400 steps
        assert EPOCH_LOW <= spe <= EPOCH_HIGH
    if spe <= STEPS_HIGH:
        assert STEPS_LOW <= run.plan.total_steps <= STEPS_HIGH


def test_epochs_for_a_long_epoch_and_the_rank_per_preset():
    assert choose_epochs(204) == 10 and choose_epochs(400) == 5 and choose_epochs(986) == 2
    assert choose_epochs(2500) == 1 and choose_epochs(5000) == 1  # one epoch already exceeds the range
    assert plan_run(config(preset="style"), lisa_layout()).config.network_dim == 256
    assert plan_run(config(preset="style"), lisa_layout()).config.network_alpha == 256
    assert plan_run(config(preset="concept"), lisa_layout()).config.network_dim == 128


def test_learning_rate_scales_with_the_effective_batch():
    assert scaled_learning_rate(1) == pytest.approx(1e-4) and scaled_learning_rate(3) == pytest.approx(3e-4)
    run = plan_run(config(preset="character", batch_size=2, gradient_accumulation_steps=2), lisa_layout())
    assert run.config.unet_lr == pytest.approx(4e-4) and run.config.text_encoder_lr == pytest.approx(4e-4)
    lion = plan_run(config(preset="character", optimizer="Lion", batch_size=4), lisa_layout()).config
    assert lion.unet_lr == 1e-4 and lion.text_encoder_lr == 5e-5  # left alone: Lion has its own scale


def test_explicit_fields_win_over_the_preset():
    explicit = config(
        preset="character",
        network_dim=64,
        network_alpha=32,
        epochs=3,
        repeats=2,
        unet_lr=5e-5,
        save_precision="float",
        save_every_n_epochs=None,
        lr_scheduler="constant",
    )
    run = plan_run(explicit, flat_layout(20))
    c = run.config
    assert (c.network_dim, c.network_alpha, c.epochs, c.repeats) == (64, 32, 3, 2)
    assert (c.unet_lr, c.save_precision, c.save_every_n_epochs, c.lr_scheduler) == (
        5e-5,
        "float",
        None,
        "constant",
    )
    assert c.text_encoder_lr == pytest.approx(1e-4)  # not set: the preset's
    assert run.plan.total_steps == 20 * 2 * 3
    # a field set to its default value is still explicit
    assert apply_preset(config(preset="style", network_dim=32), lisa_layout()).network_dim == 32
    # re-applying (a stored config has every field set) changes nothing
    again = TrainingConfig.model_validate(c.model_dump(mode="json"))
    assert apply_preset(again, flat_layout(20)) == again
    # no preset: untouched
    plain = config(epochs=2)
    assert apply_preset(plain, flat_layout(20)) is plain


def test_kohya_folders_keep_their_repeats_and_a_flat_repeats_field_is_kept():
    run = plan_run(config(preset="character", repeats=3), lisa_layout(images=34, repeats=2))
    assert run.plan.repeats == 2  # the folder's N; config.repeats is only for flat layouts
    run = plan_run(config(preset="character", repeats=3), flat_layout(20))
    assert run.config.repeats == 3 and run.plan.steps_per_epoch == 60
    assert run.config.epochs == choose_epochs(60) and run.plan.total_steps <= STEPS_HIGH


def test_the_preset_counts_buckets_and_regularization():
    sizes = {f"{i:03d}.png": ((512, 768) if i % 2 else (768, 512)) for i in range(21)}
    run = plan_run(config(preset="character", batch_size=4), flat_layout(21), sizes)
    assert run.plan.buckets and run.plan.total_steps == run.plan.steps_per_epoch * run.config.epochs
    assert EPOCH_LOW <= run.plan.steps_per_epoch <= EPOCH_HIGH
    assert run.plan.steps_per_epoch == compute_plan(run.layout, run.config, sizes).steps_per_epoch
    with_reg = plan_run(config(preset="character"), lisa_layout(reg=204))
    assert with_reg.plan.steps_per_epoch == 408 and with_reg.config.epochs == 5  # reg doubles the epoch


def test_preset_values_that_clash_with_explicit_fields_are_422s_naming_the_field():
    with pytest.raises(LorabakeError) as caught:
        apply_preset(config(preset="character", model_family="sdxl", max_bucket_reso=768), lisa_layout())
    assert caught.value.status_code == 422
    assert caught.value.details["fields"][0]["field"] == "config"
    assert "max_bucket_reso" in caught.value.details["fields"][0]["message"]


# --- FLUX.1: the FLUX trainers' values (shared/config/flux_presets.py) ------------------------------------


DEFAULT = {name: f.default for name, f in TrainingConfig.model_fields.items()}


@pytest.mark.parametrize("preset", ["character", "style", "concept"])
@pytest.mark.parametrize("layout", [lisa_layout(), flat_layout(20)])
def test_a_flux1_preset_sets_the_anchors_values_and_fits_flux1(preset, layout):
    # the family from the catalogue (model_family auto) or from the config: the same values
    for run in (
        plan_run(config(preset=preset), layout, family="flux1"),
        plan_run(config(preset=preset, model_family="flux1"), layout),
    ):
        c = run.config
        assert {k: getattr(c, k) for k in FLUX_VALUES} == FLUX_VALUES
        assert (c.resolution, c.network_dim, c.network_alpha, c.unet_lr) == (1024, 16, 16.0, 1e-4)
        assert c.text_encoder_lr == DEFAULT["text_encoder_lr"]  # CLIP-L is not trained
        flux = TrainingConfig.model_validate({**c.model_dump(mode="json"), "model_family": "flux1"})
        assert family_conflicts(c, "flux1") == family_conflicts(flux, "flux1") == []
        assert STEPS_LOW <= run.plan.total_steps <= STEPS_HIGH  # ai-toolkit's 2000 steps, as for SD


def test_a_flux1_preset_keeps_what_the_client_set_and_sd_is_unchanged():
    mine = config(preset="style", network_dim=32, discrete_flow_shift=1.0, batch_size=2)
    c = plan_run(mine, lisa_layout(), family="flux1").config
    assert (c.network_dim, c.discrete_flow_shift, c.unet_lr) == (32, 1.0, 1e-4)  # not scaled by the batch
    lion = plan_run(config(preset="style", optimizer="Lion"), lisa_layout(), family="flux1").config
    assert lion.unet_lr == DEFAULT["unet_lr"]  # Lion has its own scale
    # an SD family (given, or from the catalogue) gets the guide's values as before
    for family in (None, "sd1", "sdxl"):
        sd = plan_run(config(preset="character"), lisa_layout(), family=family).config
        assert (sd.resolution, sd.network_dim) == (512, 128)
        assert sd.guidance_scale is None and sd.timestep_sampling is None
    # an explicit family wins over the one passed in
    sdxl = plan_run(config(preset="character", model_family="sdxl"), lisa_layout(), family="flux1").config
    assert (sdxl.resolution, sdxl.guidance_scale) == (1024, None)


# --- warnings -----------------------------------------------------------------------------------------------


def test_a_run_by_the_guide_gets_no_warnings():
    run = plan_run(config(preset="character", mixed_precision="fp16"), lisa_layout())
    assert run.warnings == []


def test_each_warning_fires_when_the_guide_would_and_names_the_field():
    layout = lisa_layout()
    too_long = plan_run(config(epochs=18, mixed_precision="fp16"), layout)  # 204 x 18 = 3672
    assert codes(too_long.warnings) == {"too_many_steps"}
    assert too_long.warnings[0]["field"] == "config.epochs" and "3500" in too_long.warnings[0]["message"]
    assert codes(plan_run(config(epochs=17, mixed_precision="fp16"), layout).warnings) == set()  # 3468

    bf16 = plan_run(config(epochs=10, mixed_precision="bf16"), layout).warnings
    assert codes(bf16) == {"bf16_gpu"} and "cannot see" in bf16[0]["message"]
    assert bf16[0]["field"] == "config.mixed_precision"

    eight_bit = plan_run(config(epochs=10, mixed_precision="fp16", optimizer="AdamW8bit"), layout).warnings
    assert [(w["code"], w["field"]) for w in eight_bit] == [("adamw8bit_gpu", "config.optimizer")]

    bf16_save = plan_run(config(epochs=10, mixed_precision="fp16", save_precision="bf16"), layout).warnings
    assert [(w["code"], w["field"]) for w in bf16_save] == [("save_precision", "config.save_precision")]

    rank = plan_run(config(preset="character", mixed_precision="fp16", network_dim=256), layout).warnings
    assert [(w["code"], w["field"]) for w in rank] == [("rank_above_character", "config.network_dim")]
    style = plan_run(config(preset="style", mixed_precision="fp16"), layout)  # 256 is right for a style
    assert style.warnings == [] and style.config.network_dim == 256
    no_preset = plan_run(config(epochs=10, mixed_precision="fp16", network_dim=256), layout)
    assert no_preset.warnings == []


def test_epoch_length_warning_names_repeats_for_a_flat_dataset():
    short = plan_run(config(epochs=10, mixed_precision="fp16"), flat_layout(20))  # 20 steps per epoch
    (warning,) = short.warnings
    assert warning["code"] == "epoch_length" and warning["field"] == "config.repeats"
    assert "about 10 repeats" in warning["message"]
    kohya = plan_run(config(epochs=5, mixed_precision="fp16"), lisa_layout(images=34, repeats=12))  # 408
    (warning,) = kohya.warnings
    assert warning["code"] == "epoch_length" and "field" not in warning and "folder" in warning["message"]
    assert codes(plan_run(config(epochs=5, mixed_precision="fp16"), lisa_layout(34, 11)).warnings) == set()


def test_batch_larger_than_the_smallest_bucket():
    layout = flat_layout(21)
    sizes = {f"{i:03d}.png": (512, 512) for i in range(20)} | {"020.png": (1024, 512)}  # one wide image
    cfg = config(epochs=10, mixed_precision="fp16", repeats=2, batch_size=4)
    run = plan_run(cfg, layout, sizes)
    warning = next(w for w in run.warnings if w["code"] == "batch_exceeds_bucket")
    assert warning["field"] == "config.batch_size" and warning["bucket"]["samples"] == 2
    assert "batch_exceeds_bucket" not in codes(
        plan_run(cfg.model_copy(update={"batch_size": 2}), layout, sizes).warnings
    )
    assert "batch_exceeds_bucket" not in codes(plan_run(cfg, layout).warnings)  # no sizes, no buckets


def test_webp_from_a_stored_report_an_intake_report_or_the_file_names():
    layout = detect_layout(["img/6_x y/a.png", "img/6_x y/b.webp"])
    cfg = config(epochs=10, mixed_precision="fp16")
    plan = compute_plan(layout, cfg)
    by_name = next(w for w in plan_warnings(cfg, plan, layout) if w["code"] == "webp_images")
    assert by_name["count"] == 1 and by_name["examples"] == ["img/6_x y/b.webp"]
    stored = {
        "files": [
            {"path": "img/6_x y/a.png", "status": "converted", "conversions": ["webp converted to png"]},
            {"path": "img/6_x y/b.webp", "status": "converted", "conversions": ["webp converted to png"]},
            {"path": "img/6_x y/c.gif", "status": "rejected", "conversions": []},
        ]
    }
    from_report = next(w for w in plan_warnings(cfg, plan, layout, stored) if w["code"] == "webp_images")
    assert from_report["count"] == 2 and "converted to PNG" in from_report["message"]
    clean = {"files": [{"path": "img/6_x y/a.png", "status": "accepted", "conversions": []}]}
    assert "webp_images" not in codes(plan_warnings(cfg, plan, layout, clean))


def test_checkpoint_schedule_names_steps_and_what_keep_last_n_deletes():
    cfg = config(
        output_name="lisabp_v1",
        epochs=4,
        save_every_n_epochs=1,
        save_last_n_epochs=2,
        save_every_n_steps=100,
        save_last_n_steps=150,
    )
    run = plan_run(cfg, lisa_layout())  # 204 steps per epoch, 816 in all
    files = list(checkpoint_schedule(run.config, run.plan))
    assert [f["file"] for f in files if f["kind"] != "step"] == [
        "lisabp_v1-000001.safetensors",
        "lisabp_v1-000002.safetensors",
        "lisabp_v1-000003.safetensors",
        "lisabp_v1.safetensors",
    ]
    assert [(f["step"], f["kept"]) for f in files if f["kind"] != "step"] == [
        (204, False),
        (408, True),
        (612, True),
        (816, True),
    ]
    steps = [(f["file"], f["epoch"], f["kept"]) for f in files if f["kind"] == "step"]
    assert steps[0] == ("lisabp_v1-step00000100.safetensors", 0, False)
    assert [s for s, _, kept in steps if kept] == [
        "lisabp_v1-step00000700.safetensors",
        "lisabp_v1-step00000800.safetensors",
    ]
    assert [f["step"] for f in files] == sorted(f["step"] for f in files)
