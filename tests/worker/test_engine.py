"""The training engine on the tiny SD1.5 model: step counts, saved files, cancel, reproducibility, and that
the saved Kohya file reloads in diffusers as exactly the LoRA that was trained."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_models import save_tiny_sd15
from worker.training.engine import EngineHooks, Progress, SavedLora, TrainingCanceled, train_lora
from worker.training.errors import TrainingSetupError
from worker.training.export import read_metadata, save_kohya_lora
from worker.training.model_loading import load_sd15_pipeline, resolve_base_model

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
# min_bucket_reso 64: Kohya's 256 default must not exceed the resolution; 64x64 is then the only bucket.
BASE = dict(
    base_model="tiny", resolution=64, min_bucket_reso=64, mixed_precision="no", batch_size=2, seed=1234
)


def make_dataset(root: Path, repeats: int = 1) -> Path:
    """img/N_sks toy/: four solid-color 64x64 images (with a gradient, so they are not flat) and captions."""
    folder = root / "img" / f"{repeats}_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.6, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in COLORS.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)[None, None, :]).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    models = tmp_path_factory.mktemp("models")
    save_tiny_sd15(models / "tiny", seed=0)
    return models, make_dataset(tmp_path_factory.mktemp("data"))


class Recorder:
    def __init__(self, cancel_after: int | None = None):
        self.stages: list[str] = []
        self.progress: list[Progress] = []
        self.saved: list[SavedLora] = []
        self.saved_complete: list[bool] = []
        self.cancel_after = cancel_after

    def hooks(self) -> EngineHooks:
        return EngineHooks(
            on_stage=self.stages.append,
            on_progress=self.progress.append,
            on_saved=self._saved,
            should_cancel=self._cancel,
        )

    def _saved(self, saved: SavedLora) -> None:
        self.saved.append(saved)
        self.saved_complete.append(bool(load_file(saved.path)))  # complete and readable when announced

    def _cancel(self) -> bool:
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after


# rank 4 / alpha 2 (alpha != rank), text encoder trained, a strong lr so the LoRA visibly changes the output.
TRAINED = TrainingConfig(
    **BASE,
    output_name="toy",
    epochs=6,
    save_every_n_epochs=2,
    network_dim=4,
    network_alpha=2.0,
    unet_lr=1e-2,
    text_encoder_lr=1e-2,
    save_precision="float",
)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    models, dataset = env
    rec = Recorder()
    t0 = time.perf_counter()
    result = train_lora(
        TRAINED, dataset, tmp_path_factory.mktemp("out"), models_dir=models, hooks=rec.hooks(), device="cpu"
    )
    print(f"\n[engine] {result.plan.total_steps} steps in {time.perf_counter() - t0:.2f}s incl. load/cache")
    return result, rec


def test_steps_saves_and_hooks(trained):
    result, rec = trained
    plan = result.plan
    assert (plan.steps_per_epoch, plan.total_steps, plan.saved_epochs) == (2, 12, [2, 4, 6])
    assert [p.step for p in rec.progress] == list(range(1, plan.total_steps + 1))
    assert [p.epoch for p in rec.progress] == [e for e in range(1, 7) for _ in range(2)]
    assert all(p.loss is not None and np.isfinite(p.loss) for p in rec.progress)
    assert rec.progress[-1].eta_seconds == 0 and rec.progress[-1].steps_per_second > 0
    names = [f.path.name for f in result.files]
    assert names == ["toy-000002.safetensors", "toy-000004.safetensors", "toy.safetensors"]
    expected = [(2, 4, False), (4, 8, False), (6, 12, True)]
    assert [(f.epoch, f.step, f.is_final) for f in result.files] == expected
    assert rec.saved == result.files and all(rec.saved_complete)
    out_files = sorted(p.name for p in result.files[0].path.parent.iterdir())
    assert out_files == sorted(names)  # no temp files left behind
    assert rec.stages[:3] == ["loading_model", "caching_latents", "training"] and rec.stages[-1] == "saving"
    meta = read_metadata(result.files[1].path)
    assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_seed"]) == ("4", "8", "1234")
    assert meta["ss_num_train_images"] == "4" and meta["ss_num_batches_per_epoch"] == "2"
    assert meta["ss_dataset_dirs"] == '{"1_sks toy": {"n_repeats": 1, "img_count": 4}}'
    assert '"sks": 4' not in meta["ss_tag_frequency"] and '"sks toy": 4' in meta["ss_tag_frequency"]


def _images(pipe) -> np.ndarray:
    return pipe(
        "sks toy, red", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(7)
    ).images


def _fresh(models: Path):
    pipe = load_sd15_pipeline(resolve_base_model("tiny", models))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def test_saved_file_reloads_as_the_trained_lora(env, trained):
    """STACK-FACTS: prove a file by reloading it in a fresh pipeline and comparing with the trained one."""
    models, _ = env
    result, _ = trained
    final = result.files[-1].path
    trained_pipe = result.pipeline
    trained_pipe.set_progress_bar_config(disable=True)
    base, loaded = _fresh(models), _fresh(models)
    loaded.load_lora_weights(str(final))

    got, want, before = _images(loaded), _images(trained_pipe), _images(base)
    diff = float(np.abs(got - want).max())
    print(f"\n[roundtrip float] pipeline max abs diff {diff:.2e}; vs base {np.abs(want - before).max():.3f}")
    assert diff < 1e-4
    assert np.abs(want - before).max() > 0.05  # the LoRA really changed the model

    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 32, 32, generator=gen)
    tokenizer = trained_pipe.tokenizer
    ids = tokenizer(["sks toy, blue"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    te_want = trained_pipe.text_encoder(ids)[0]
    te_got = loaded.text_encoder(ids)[0]
    assert (te_want - base.text_encoder(ids)[0]).abs().max() > 1e-3
    assert (te_got - te_want).abs().max() < 1e-5
    unet_want = trained_pipe.unet(sample, 500, te_want).sample
    unet_got = loaded.unet(sample, 500, te_want).sample
    assert (unet_want - base.unet(sample, 500, te_want).sample).abs().max() > 1e-3
    assert (unet_got - unet_want).abs().max() < 1e-5

    # The default save precision, fp16, reloads as nearly the same LoRA.
    half = save_kohya_lora(
        trained_pipe.unet,
        trained_pipe.text_encoder,
        final.with_name("half.safetensors"),
        network_alpha=TRAINED.network_alpha,
        save_dtype=torch.float16,
        metadata={},
    )
    loaded16 = _fresh(models)
    loaded16.load_lora_weights(str(half))
    diff16 = float(np.abs(_images(loaded16) - want).max())
    print(f"[roundtrip fp16] pipeline max abs diff {diff16:.2e}")
    assert diff16 < 1e-2


def test_same_seed_same_lora(env, trained, tmp_path):
    models, dataset = env
    result, _ = trained
    again = train_lora(TRAINED, dataset, tmp_path, models_dir=models, device="cpu")
    assert again.seed == result.seed == 1234
    for first, second in zip(result.files, again.files, strict=True):
        a, b = load_file(first.path), load_file(second.path)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_keeps_files_saved_before(env, tmp_path):
    models, dataset = env
    rec = Recorder(cancel_after=3)  # turns true after step 3 (epoch 2's first step)
    config = TrainingConfig(
        **BASE,
        output_name="c",
        epochs=4,
        save_every_n_epochs=1,
        network_dim=2,
        network_alpha=1.0,
        text_encoder_lr=0,
    )
    with pytest.raises(TrainingCanceled) as info:
        train_lora(config, dataset, tmp_path, models_dir=models, hooks=rec.hooks(), device="cpu")
    assert len(rec.progress) == 3
    assert [f.path.name for f in rec.saved] == ["c-000001.safetensors"]
    assert info.value.files == rec.saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-000001.safetensors"]
    assert load_file(tmp_path / "c-000001.safetensors")


def test_loss_falls(env, tmp_path):
    """~30 steps on a learnable tiny dataset (UNet only, so the frozen text encoder's output is cached)."""
    models, dataset = env
    config = TrainingConfig(
        **{**BASE, "batch_size": 4},
        output_name="l",
        epochs=30,
        save_every_n_epochs=None,
        network_dim=8,
        network_alpha=8.0,
        unet_lr=1e-2,
        text_encoder_lr=0,
    )
    rec = Recorder()
    t0 = time.perf_counter()
    result = train_lora(config, dataset, tmp_path, models_dir=models, hooks=rec.hooks(), device="cpu")
    elapsed = time.perf_counter() - t0
    losses = [p.loss for p in rec.progress]
    print(
        f"\n[loss] {len(losses)} steps {elapsed:.2f}s, {rec.progress[-1].steps_per_second:.1f} steps/s; "
        f"first5 {np.mean(losses[:5]):.4f} last5 {np.mean(losses[-5:]):.4f}"
    )
    assert len(losses) == 30 and [f.path.name for f in result.files] == ["l.safetensors"]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_gradient_checkpointing_gives_the_same_lora(env, tmp_path):
    models, dataset = env
    kwargs = dict(
        **BASE,
        epochs=1,
        network_dim=2,
        network_alpha=1.0,
        unet_lr=1e-2,
        text_encoder_lr=1e-2,
        save_precision="float",
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
    )
    plain = train_lora(
        TrainingConfig(**kwargs, output_name="p"), dataset, tmp_path, models_dir=models, device="cpu"
    )
    ckpt = train_lora(
        TrainingConfig(**kwargs, output_name="g", gradient_checkpointing=True),
        dataset,
        tmp_path,
        models_dir=models,
        device="cpu",
    )
    assert plain.plan.total_steps == 1  # two batches, accumulated into one optimizer step
    a, b = load_file(plain.files[0].path), load_file(ckpt.files[0].path)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert any(a[k].abs().max() > 0 for k in a if "lora_up" in k)  # the step really changed the weights


def test_bf16_on_cpu(env, tmp_path):
    """The config's default precision (bf16 autocast) also runs on a CPU-only worker."""
    models, dataset = env
    config = TrainingConfig(
        **{**BASE, "mixed_precision": "bf16"},
        epochs=1,
        network_dim=2,
        network_alpha=1.0,
        unet_lr=1e-2,
        text_encoder_lr=1e-2,
    )
    result = train_lora(config, dataset, tmp_path, models_dir=models, device="cpu")
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    tensors = load_file(result.files[0].path)
    weights = {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")}
    assert weights == {torch.float16}  # save_precision's default
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_te_" in k and "lora_up" in k)


def test_random_seed_is_chosen_and_recorded(env, tmp_path):
    models, dataset = env
    config = TrainingConfig(
        **{**BASE, "seed": None}, epochs=1, network_dim=2, network_alpha=1.0, text_encoder_lr=0
    )
    result = train_lora(config, dataset, tmp_path, models_dir=models, device="cpu")
    assert 0 <= result.seed < 2**32
    assert read_metadata(result.files[0].path)["ss_seed"] == str(result.seed)


def test_setup_errors_come_before_any_work(env, tmp_path):
    models, dataset = env
    stages: list[str] = []
    config = TrainingConfig(**{**BASE, "mixed_precision": "fp16"})
    with pytest.raises(TrainingSetupError, match="fp16") as info:
        train_lora(
            config,
            dataset,
            tmp_path,
            models_dir=models,
            hooks=EngineHooks(on_stage=stages.append),
            device="cpu",
        )
    assert isinstance(info.value, ValueError) and info.value.code == "training_setup"
    assert stages == [] and list(tmp_path.iterdir()) == []


def test_missing_bitsandbytes_is_a_clear_error(env, tmp_path, monkeypatch):
    import sys

    models, dataset = env
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    config = TrainingConfig(**BASE, optimizer="AdamW8bit", epochs=1, network_dim=2, network_alpha=1.0)
    stages: list[str] = []
    with pytest.raises(TrainingSetupError, match="bitsandbytes"):
        train_lora(
            config,
            dataset,
            tmp_path,
            models_dir=models,
            device="cpu",
            hooks=EngineHooks(on_stage=stages.append),
        )
    assert stages == []  # refused before the model was loaded


def test_key_names_of_a_trained_file(trained):
    result, _ = trained
    keys = load_file(result.files[-1].path).keys()
    assert all(re.match(r"^lora_(unet|te)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$", k) for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)


def test_regularization_accumulation_and_short_batches(env, tmp_path):
    """Reg matching doubles the samples, the last batch is short, accumulation groups end with the epoch."""
    models, _ = env
    dataset = make_dataset(tmp_path / "data", repeats=3)
    reg = dataset / "reg" / "1_toy"
    reg.mkdir(parents=True)
    for i, rgb in enumerate(((128, 128, 128), (10, 10, 10))):
        Image.new("RGB", (80, 64), rgb).save(reg / f"r{i}.png")
    config = TrainingConfig(
        **{**BASE, "batch_size": 5},
        gradient_accumulation_steps=2,
        epochs=2,
        network_dim=2,
        network_alpha=1.0,
        text_encoder_lr=0,
        save_every_n_epochs=None,
    )
    rec = Recorder()
    result = train_lora(config, dataset, tmp_path / "out", models_dir=models, hooks=rec.hooks(), device="cpu")
    plan = result.plan
    assert (plan.samples_per_epoch, plan.batches_per_epoch, plan.steps_per_epoch) == (24, 5, 3)
    assert [p.step for p in rec.progress] == list(range(1, 7)) and plan.total_steps == 6
    assert [p.epoch for p in rec.progress] == [1, 1, 1, 2, 2, 2]
    meta = read_metadata(result.files[0].path)
    assert meta["ss_num_reg_images"] == "2" and meta["ss_reg_dataset_dirs"] == (
        '{"1_toy": {"n_repeats": 1, "img_count": 2}}'
    )


def _striped(size: tuple[int, int], rgb: tuple[int, int, int]) -> Image.Image:
    """A colour with a horizontal ramp, so mirroring changes the image."""
    ramp = np.linspace(0.3, 1.0, size[0], dtype=np.float32)[None, :, None]
    pixels = (ramp * np.array(rgb, dtype=np.float32)[None, None, :]).repeat(size[1], axis=0)
    return Image.fromarray(pixels.astype(np.uint8))


def make_mixed_dataset(root: Path) -> Path:
    """img/1_sks toy: 2 portraits 48x128, 1 landscape 128x48, 2 squares 64x64; reg/1_toy: 2 landscapes."""
    train, reg = root / "img" / "1_sks toy", root / "reg" / "1_toy"
    train.mkdir(parents=True)
    reg.mkdir(parents=True)
    shapes = {"p1": (48, 128), "p2": (48, 128), "l1": (128, 48), "s1": (64, 64), "s2": (64, 64)}
    for i, (name, size) in enumerate(shapes.items()):
        _striped(size, list(COLORS.values())[i % 4]).save(train / f"{name}.png")
        (train / f"{name}.txt").write_text(f"sks toy, {name}, shape, color {i}\n", encoding="utf-8")
    for i in range(2):
        _striped((128, 48), (90 + 60 * i, 90, 90)).save(reg / f"r{i}.png")
    return root


MIXED = dict(
    **{**BASE, "batch_size": 4, "min_bucket_reso": 32},
    max_bucket_reso=128,
    bucket_reso_steps=32,
    epochs=2,
    network_dim=2,
    network_alpha=1.0,
    text_encoder_lr=0,
    save_every_n_epochs=None,
)


def test_mixed_aspect_ratios_take_exactly_the_planned_steps(env, tmp_path):
    """Buckets at 64 (steps 32, 32..128): 48x128 -> 32x96, 128x48 -> 96x32, 64x64 -> 64x64. 5 train samples;
    reg matched 3 + 2. Per bucket ceil(n / 4): 32x96 2 -> 1, 64x64 2 -> 1, 96x32 1 + 5 = 6 -> 2: 4 batches
    and steps per epoch (one bucket would be ceil(10 / 4) = 3)."""
    models, _ = env
    dataset = make_mixed_dataset(tmp_path / "data")
    rec = Recorder()
    result = train_lora(
        TrainingConfig(**MIXED), dataset, tmp_path / "out", models_dir=models, hooks=rec.hooks(), device="cpu"
    )
    plan = result.plan
    buckets = [(b.width, b.height, b.images, b.samples, b.batches) for b in plan.buckets]
    assert buckets == [(32, 96, 2, 2, 1), (64, 64, 2, 2, 1), (96, 32, 3, 6, 2)]
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (4, 4, 8)
    assert [p.step for p in rec.progress] == list(range(1, 9))
    assert [p.epoch for p in rec.progress] == [1] * 4 + [2] * 4
    assert all(np.isfinite(p.loss) for p in rec.progress)
    meta = read_metadata(result.files[-1].path)
    bucket_meta = (meta["ss_enable_bucket"], meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"])
    assert bucket_meta == ("True", "32", "128")
    assert json.loads(meta["ss_bucket_info"])["buckets"]["2"] == {"resolution": [96, 32], "count": 6}


def test_caption_options_flip_and_disk_cache_stay_reproducible(env, tmp_path, monkeypatch):
    """Per-step captions (shuffle, keep_tokens, dropout, tag dropout) with a frozen text encoder (so the
    output cache is bypassed), flip_aug, latents cached on disk: the same seed gives the same LoRA, and the
    second run reads every latent from the cache."""
    from worker.training import data

    models, _ = env
    dataset = make_mixed_dataset(tmp_path / "data")
    config = TrainingConfig(
        **{**MIXED, "epochs": 1, "unet_lr": 1e-2},
        shuffle_caption=True,
        keep_tokens=1,
        caption_dropout_rate=0.3,
        caption_tag_dropout_rate=0.2,
        caption_prefix="photo of",
        flip_aug=True,
        cache_latents_to_disk=True,
        prior_loss_weight=0.5,
    )
    seen: list[tuple[str, ...]] = []
    real_batches = data.epoch_batches

    def spy(*args, **kwargs):
        batches = real_batches(*args, **kwargs)
        seen.extend(b.captions for b in batches)
        assert all(b.flipped is not None for b in batches)
        return batches

    monkeypatch.setattr(data, "epoch_batches", spy)
    cache = tmp_path / "cache"
    first = train_lora(config, dataset, tmp_path / "a", models_dir=models, device="cpu", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2 * 7  # 7 images, both orientations
    captions = [c for batch in seen for c in batch]
    assert "" in captions and "photo of toy" in captions  # dropped; a reg image's folder caption
    assert all(c in ("", "photo of toy") or c.startswith("photo of sks toy, ") for c in captions)
    monkeypatch.setattr(data, "load_bucket_image", lambda *a, **k: pytest.fail("latents should be on disk"))
    second = train_lora(config, dataset, tmp_path / "b", models_dir=models, device="cpu", cache_dir=cache)
    a, b = load_file(first.files[0].path), load_file(second.files[0].path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().max() > 0 for k in a if "lora_up" in k)


# --- pieces of the engine -----------------------------------------------------------------------------------


def test_sample_table_and_epoch_batches(tmp_path):
    from shared.datasets.layout import DatasetLayout, ImageEntry, Subset
    from worker.training import data

    folder = tmp_path / "img" / "2_sks toy"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("\n  first line , tag \nsecond\n", encoding="utf-8")
    (folder / "b.txt").write_text("  \n", encoding="utf-8")
    train = Subset(
        "img/2_sks toy",
        2,
        "sks",
        "toy",
        False,
        (
            ImageEntry("img/2_sks toy/a.png", "img/2_sks toy/a.txt"),
            ImageEntry("img/2_sks toy/b.png", "img/2_sks toy/b.txt"),
            ImageEntry("img/2_sks toy/c.png", None),
        ),
    )
    reg = Subset("reg/1_toy", 1, None, "toy", True, (ImageEntry("reg/1_toy/r.png", None),))
    table = data.build_sample_table(DatasetLayout(kind="kohya", subsets=(train, reg)), tmp_path)
    assert table.captions == ("first line , tag", "sks toy", "sks toy", "toy")
    assert len(table.image_paths) == 4 and len(table.epoch_items) == 12  # 3 x 2 train + 6 matched reg
    assert table.loss_weights().tolist() == [1.0, 1.0, 1.0, data.PRIOR_LOSS_WEIGHT]
    assert table.loss_weights(0.5).tolist() == [1.0, 1.0, 1.0, 0.5]  # prior_loss_weight
    order = data.SampleOrder(table.epoch_items, item_bucket=(0, 0, 0, 0))  # one bucket
    one = data.epoch_batches(order, seed=1, epoch=1, batch_size=5)
    assert sorted(len(b) for b in one) == [2, 5, 5]  # the short batch lands anywhere (Kohya shuffles batches)
    assert sorted(torch.cat([b.items for b in one]).tolist()) == sorted(table.epoch_items)
    again = data.epoch_batches(order, seed=1, epoch=1, batch_size=5)
    assert all(torch.equal(x.items, y.items) for x, y in zip(one, again, strict=True))
    other_epoch = data.epoch_batches(order, seed=1, epoch=2, batch_size=5)
    assert not torch.equal(torch.cat([b.items for b in one]), torch.cat([b.items for b in other_epoch]))


def test_images_are_upright_rgb_short_side_resized_and_center_cropped(tmp_path):
    from worker.training import data

    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 60))  # red left quarter, cropped away by a centered square crop
    exif = img.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = data.load_image(tmp_path / "rot.jpg")
    assert loaded.size == (60, 120) and loaded.mode == "RGB"
    Image.new("LA", (10, 10)).save(tmp_path / "gray.png")
    assert data.load_image(tmp_path / "gray.png").mode == "RGB"
    img.save(tmp_path / "wide.png")
    tensor = data.load_training_image(tmp_path / "wide.png", 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert tensor[2].mean() > 0.9 and tensor[0].mean() < -0.9  # only the blue middle remains


def test_noise_schedule_matches_diffusers(tmp_path):
    from diffusers import DDPMScheduler

    from worker.training.families.sd import NoiseSchedule

    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 500, 999])
    for prediction_type in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
        )
        noisy, target = NoiseSchedule(sched, torch.device("cpu")).noisy_and_target(latents, noise, t)
        torch.testing.assert_close(noisy, sched.add_noise(latents, noise, t))
        want = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        torch.testing.assert_close(target, want)


def test_optimizers_and_schedules():
    from worker.training import optim

    config = TrainingConfig(
        base_model="x",
        unet_lr=1e-3,
        text_encoder_lr=1e-4,
        lr_scheduler="linear",
        lr_warmup_steps=2,
        optimizer="Adafactor",
    )
    unet_p, te_p = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]
    opt = optim.build_optimizer(config, unet_p, te_p)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert optim.optimizer_name(opt) == (
        "transformers.optimization.Adafactor(scale_parameter=False,relative_step=False,warmup_init=False)"
    )
    sched = optim.build_lr_scheduler(config, opt, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[2] == pytest.approx(1e-3) and lrs[-1] < lrs[3]
    adamw = optim.build_optimizer(config.model_copy(update={"optimizer": "AdamW"}), unet_p)
    assert optim.optimizer_name(adamw) == "torch.optim.adamw.AdamW" and len(adamw.param_groups) == 1
