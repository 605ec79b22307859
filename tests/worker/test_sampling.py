"""Sample images on the tiny models: every sampler, seeds, PNG parameters, state restored, SDXL, and the
engine's Kohya schedule (at first, every N steps / epochs) with the in-memory LoRA."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from shared.config.sample_prompts import SAMPLERS, parse_prompt_line
from shared.config.spec import TrainingConfig
from worker.devtools.tiny_models import build_tiny_sd15_pipeline, build_tiny_sdxl_pipeline, save_tiny_sd15
from worker.training import sampling
from worker.training.engine import EngineHooks, train_lora
from worker.training.errors import TrainingSetupError
from worker.training.sampling import SavedSample, build_scheduler, generate_samples

HAS_SCIPY = importlib.util.find_spec("scipy") is not None


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd15_pipeline(seed=0)


def run(pipe, lines: list[str], out: Path, **kwargs) -> list[SavedSample]:
    options = dict(output_name="toy", epoch=1, step=2, by_epoch=False, default_sampler="euler_a", run_seed=5)
    return generate_samples(pipe, [parse_prompt_line(line) for line in lines], out, **{**options, **kwargs})


def pixels(sample: SavedSample) -> np.ndarray:
    return np.asarray(Image.open(sample.path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if HAS_SCIPY or SAMPLERS[s].requires != "scipy"])
def test_each_sampler_makes_an_image_of_the_asked_size(pipe, tmp_path, sampler):
    (sample,) = run(pipe, [f"a red toy --n blurry --w 64 --h 96 --s 3 --d 11 --ss {sampler}"], tmp_path)
    image = Image.open(sample.path)
    assert image.format == "PNG" and image.size == (64, 96)
    assert sample.sampler == sampler and (sample.width, sample.height, sample.seed) == (64, 96, 11)
    assert pixels(sample).std() > 0  # a real picture, not a blank one


def test_scheduler_is_built_from_the_models_config(pipe):
    karras = build_scheduler(pipe.scheduler.config, "DPM++ 2M Karras")
    assert type(karras).__name__ == "DPMSolverMultistepScheduler" and karras.config.use_karras_sigmas
    assert karras.config.algorithm_type == "dpmsolver++"
    euler = build_scheduler(pipe.scheduler.config, "k_euler", prediction_type="v_prediction")
    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert euler.config.prediction_type == "v_prediction"
    assert euler.config.beta_schedule == pipe.scheduler.config.beta_schedule == "scaled_linear"


def test_same_seed_same_image_other_seed_other_image_and_png_parameters(pipe, tmp_path):
    line = "sks toy, red --n dull --w 64 --h 64 --s 4 --l 5"
    a, b, c = run(pipe, [f"{line} --d 1", f"{line} --d 1", f"{line} --d 2"], tmp_path / "x")
    assert (a.prompt_index, b.prompt_index, c.prompt_index) == (0, 1, 2)
    assert [s.path.name for s in (a, b, c)] == ["toy_000002_00.png", "toy_000002_01.png", "toy_000002_02.png"]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).max() > 0

    # No --d: a seed derived from the run seed and the prompt's position, the same on every call.
    (d,) = run(pipe, [line], tmp_path / "y")
    (e,) = run(pipe, [line], tmp_path / "z")
    assert d.seed == e.seed == sampling.derive_seed(5, 0) and np.array_equal(pixels(d), pixels(e))

    text = Image.open(a.path).text
    assert text["parameters"] == (
        "sks toy, red\nNegative prompt: dull\n"
        "Steps: 4, Sampler: Euler a, CFG scale: 5, Seed: 1, Size: 64x64, Epoch: 1, Step: 2"
    )
    assert json.loads(text["lorabake"]) == {**a.meta(), "epoch": 1, "step": 2}
    assert a.meta() == {
        "prompt": "sks toy, red",
        "negative_prompt": "dull",
        "seed": 1,
        "width": 64,
        "height": 64,
        "cfg_scale": 5.0,
        "steps": 4,
        "sampler": "euler_a",
        "prompt_index": 0,
    }
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [s.path.name for s in (a, b, c)]  # no temp


def test_modes_scheduler_and_rng_are_restored(pipe, tmp_path):
    pipe.unet.train()
    pipe.text_encoder.eval()
    pipe.unet.down_blocks[0].eval()  # mixed flags inside one model survive too
    scheduler = pipe.scheduler
    seen: list[bool] = []
    torch.manual_seed(123)
    (sample,) = run(
        pipe,
        ["a --w 64 --h 64 --s 2 --ss ddim"],
        tmp_path,
        on_sample=lambda s: seen.append(s.path.is_file() and not pipe.unet.training),
    )
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # sampling drew nothing from the global RNG the loop sees
    assert seen == [True]  # announced after the file was complete, while still in eval mode
    assert pipe.scheduler is scheduler
    assert pipe.unet.training and not pipe.unet.down_blocks[0].training and pipe.unet.up_blocks[0].training
    assert not pipe.text_encoder.training and not pipe.vae.training


def test_sdxl_pipeline_samples_the_same_way(tmp_path):
    (sample,) = run(build_tiny_sdxl_pipeline(seed=0), ["a toy --n bad --w 64 --h 64 --s 2 --d 3"], tmp_path)
    assert Image.open(sample.path).size == (64, 64) and pixels(sample).std() > 0


def test_kohya_schedule_rules():
    def cfg(**kw) -> TrainingConfig:
        return TrainingConfig(base_model="m", enable_bucket=False, resolution=64, **kw)

    steps = cfg(sample_every_n_steps=3)
    assert [s for s in range(1, 10) if sampling.due_at_step(steps, s)] == [3, 6, 9]
    assert not any(sampling.due_at_epoch(steps, e) for e in range(1, 5))
    both = cfg(sample_every_n_steps=1, sample_every_n_epochs=2)  # epochs take over, as in Kohya
    assert not any(sampling.due_at_step(both, s) for s in range(1, 10))
    assert [e for e in range(1, 6) if sampling.due_at_epoch(both, e)] == [2, 4]


# --- in the engine ------------------------------------------------------------------------------------------

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
PROMPTS = [
    "sks toy, red --n blurry --w 64 --h 64 --s 3 --d 9",
    "# not a prompt",
    "sks toy --w 64 --h 64 --s 3",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    save_tiny_sd15(models / "tiny", seed=0)
    folder = tmp_path_factory.mktemp("data") / "img" / "1_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.6, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in COLORS.items():
        image = (ramp * np.array(rgb, dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}\n", encoding="utf-8")
    return models, folder.parent.parent


def config(**kw) -> TrainingConfig:
    base = dict(
        base_model="tiny",
        output_name="toy",
        resolution=64,
        enable_bucket=False,
        mixed_precision="no",
        batch_size=2,
        epochs=3,  # 4 images / batch 2 = 2 steps per epoch, 6 steps
        network_dim=4,
        network_alpha=4.0,
        unet_lr=2e-2,
        text_encoder_lr=1e-2,
        save_precision="float",
        seed=77,
    )
    return TrainingConfig(**{**base, **kw})


def test_engine_samples_at_first_and_every_n_steps_with_the_lora(env, tmp_path):
    models, dataset = env
    got: list[SavedSample] = []
    stages: list[str] = []
    conf = config(
        sample_prompts=PROMPTS, sample_every_n_steps=2, sample_at_first=True, sample_sampler="euler"
    )
    result = train_lora(
        conf,
        dataset,
        tmp_path / "out",
        models_dir=models,
        device="cpu",
        hooks=EngineHooks(on_sample=got.append, on_stage=stages.append),
    )
    assert result.plan.total_steps == 6
    assert [(s.step, s.prompt_index) for s in got] == [(st, i) for st in (0, 2, 4, 6) for i in (0, 1)]
    assert [s.epoch for s in got[::2]] == [0, 1, 2, 3]
    assert {s.sampler for s in got} == {"euler"} and {s.seed for s in got[::2]} == {9}
    assert got[1].seed == sampling.derive_seed(77, 1)  # no --d: derived from the run's seed
    names = sorted(p.name for p in (tmp_path / "out" / "sample").iterdir())
    assert names == sorted(s.path.name for s in got)
    assert got[0].path.name == "toy_e000000_00.png" and got[-1].path.name == "toy_000006_01.png"
    assert stages.count("sampling") == 4

    # At step 0 the LoRA is still zero: the base model's image. After training with a high lr it differs.
    base = StableDiffusionPipeline.from_pretrained(models / "tiny")  # the scheduler config as the engine's
    (before,) = run(base, [PROMPTS[0]], tmp_path / "base", default_sampler="euler")
    assert np.abs(pixels(before) - pixels(got[0])).max() <= 1
    assert np.abs(pixels(before) - pixels(got[-2])).max() > 10

    # Sampling does not change training: the same run without samples gives the same LoRA.
    plain = train_lora(config(), dataset, tmp_path / "plain", models_dir=models, device="cpu")
    a, b = load_file(result.files[-1].path), load_file(plain.files[-1].path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_engine_samples_after_every_nth_epoch(env, tmp_path):
    models, dataset = env
    got: list[tuple[SavedSample, list[str]]] = []
    saved: list[str] = []

    def on_saved(file) -> None:  # noqa: ANN001
        saved.append(file.path.name)

    conf = config(
        sample_prompts=PROMPTS[:1], sample_every_n_epochs=2, sample_every_n_steps=1, save_every_n_epochs=1
    )
    train_lora(
        conf,
        dataset,
        tmp_path,
        models_dir=models,
        device="cpu",
        hooks=EngineHooks(on_sample=lambda s: got.append((s, list(saved))), on_saved=on_saved),
    )
    assert [(s.epoch, s.step, s.path.name) for s, _ in got] == [(2, 4, "toy_e000002_00.png")]
    assert got[0][1][-1] == "toy-000002.safetensors"  # after that epoch's save
    assert got[0][0].sampler == "ddim"  # the config's default, Kohya's


def test_a_sampler_this_worker_cannot_build_fails_before_any_work(env, tmp_path, monkeypatch):
    models, dataset = env
    monkeypatch.setitem(sys.modules, "scipy", None)  # LMS needs scipy: import it fails as if not installed
    stages: list[str] = []
    with pytest.raises(TrainingSetupError, match="scipy"):
        train_lora(
            config(sample_prompts=["a --ss k_lms"], sample_at_first=True),
            dataset,
            tmp_path,
            models_dir=models,
            device="cpu",
            hooks=EngineHooks(on_stage=stages.append),
        )
    assert stages == []
