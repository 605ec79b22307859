"""Masked training (sd-scripts' --masked_loss / --alpha_mask): the loss weighted by a per-image mask at
latent size. Pixels with weight 0 must not steer the trained weights through the loss.

Where a mask is 0 only on part of an image, those pixels still reach the UNet as its input (the noisy
latents around the trained region), in sd-scripts as here: masking removes their loss, not their context.
So the exact "no effect" check trains on an image whose mask is 0 everywhere: its loss and with it its
gradient are exactly 0, and the LoRA must come out bit-identical whatever that image holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shared.config.buckets import BucketSettings, assign_buckets
from shared.config.spec import TrainingConfig
from shared.errors import DatasetError
from worker.devtools.tiny_models import save_tiny_sd15
from worker.training import data
from worker.training.engine import train_lora

# batch 1 so the ignored image's steps are steps of their own (its zero gradient is the whole step)
BASE = dict(
    base_model="tiny",
    resolution=64,
    min_bucket_reso=64,
    mixed_precision="no",
    batch_size=1,
    seed=7,
    epochs=2,
    network_dim=4,
    network_alpha=2.0,
    unet_lr=1e-2,
    text_encoder_lr=1e-2,
    save_precision="float",
    save_every_n_epochs=None,
)
FOLDER = "img/1_sks toy"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_sd15(root / "tiny", seed=0)
    return root


def _kept() -> np.ndarray:
    ramp = np.linspace(0.5, 1.0, 64, dtype=np.float32)[None, :, None]
    return (ramp * np.array([220, 60, 30], dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def _half_mask() -> np.ndarray:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :40] = 255  # left part trained, right part ignored
    return mask


def mask_files_dataset(root: Path, noise_seed: int, *, ignored_mask: int = 0) -> Path:
    """kept.png (a partial mask) and ignored.png (random noise from `noise_seed`, mask all `ignored_mask`)."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    Image.fromarray(_kept()).save(folder / "kept.png")
    Image.fromarray(_half_mask(), "L").save(folder / "kept_mask.png")
    Image.fromarray(_noise(noise_seed)).save(folder / "ignored.png")
    Image.new("L", (64, 64), ignored_mask).save(folder / "ignored_mask.png")
    for name in ("kept", "ignored"):
        (folder / f"{name}.txt").write_text(f"sks toy, {name}\n", encoding="utf-8")
    return root


def alpha_dataset(root: Path, noise_seed: int) -> Path:
    """The same two images as RGBA: the masks are their alpha channels."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    Image.fromarray(np.dstack([_kept(), _half_mask()]), "RGBA").save(folder / "kept.png")
    ignored = np.dstack([_noise(noise_seed), np.zeros((64, 64), np.uint8)])
    Image.fromarray(ignored, "RGBA").save(folder / "ignored.png")
    for name in ("kept", "ignored"):
        (folder / f"{name}.txt").write_text(f"sks toy, {name}\n", encoding="utf-8")
    return root


def _train(models: Path, dataset: Path, out: Path, **options) -> dict[str, torch.Tensor]:
    result = train_lora(TrainingConfig(**BASE, **options), dataset, out, models_dir=models, device="cpu")
    assert result.plan.total_steps == 4
    return load_file(result.files[-1].path)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [{}, {"flip_aug": True}], ids=["plain", "flip_aug"])
def test_masked_out_pixels_have_no_effect_on_the_trained_weights(models: Path, tmp_path: Path, extra):
    one = mask_files_dataset(tmp_path / "one", noise_seed=1)
    two = mask_files_dataset(tmp_path / "two", noise_seed=2)  # differs only where the mask is 0
    masked = [
        _train(models, d, tmp_path / f"out-m{i}", masked_loss=True, **extra) for i, d in enumerate((one, two))
    ]
    assert _same(*masked)  # exactly: a weight-0 sample's gradient is exactly 0 (0 * finite)
    # the check can fail: the same two datasets trained unmasked give different LoRAs
    unmasked = [_train(models, d, tmp_path / f"out-u{i}", **extra) for i, d in enumerate((one, two))]
    assert not _same(*unmasked)
    assert not _same(masked[0], unmasked[0])  # and the masks did change training


def test_alpha_channel_masks_work_the_same(models: Path, tmp_path: Path):
    one, two = alpha_dataset(tmp_path / "one", 1), alpha_dataset(tmp_path / "two", 2)
    masked = [_train(models, d, tmp_path / f"out-a{i}", alpha_mask=True) for i, d in enumerate((one, two))]
    assert _same(*masked)
    unmasked = [_train(models, d, tmp_path / f"out-u{i}") for i, d in enumerate((one, two))]
    assert not _same(*unmasked)
    # the alpha channel is the same mask as the mask files: the same LoRA as masked_loss with files
    # (RGBA images load as their RGB channels, the pixels of the mask-file dataset)
    files = _train(models, mask_files_dataset(tmp_path / "files", 1), tmp_path / "out-f", masked_loss=True)
    assert _same(masked[0], files)


def test_default_path_is_unchanged_by_the_mask_code(models: Path, tmp_path: Path):
    """Masks of all ones multiply the loss by exactly 1, and masked_loss with no mask files skips masking:
    both train bit-for-bit the LoRA of a run without masked_loss."""
    white = mask_files_dataset(tmp_path / "white", noise_seed=1, ignored_mask=255)
    for mask in (white / FOLDER).glob("kept_mask.png"):
        Image.new("L", (64, 64), 255).save(mask)
    plain = tmp_path / "plain"
    (plain / FOLDER).mkdir(parents=True)
    for path in (white / FOLDER).iterdir():
        if not path.stem.endswith("_mask"):
            (plain / FOLDER / path.name).write_bytes(path.read_bytes())
    default = _train(models, plain, tmp_path / "out-d")
    assert _same(default, _train(models, white, tmp_path / "out-w", masked_loss=True))
    assert _same(default, _train(models, plain, tmp_path / "out-n", masked_loss=True))
    assert _same(default, _train(models, white, tmp_path / "out-i"))  # masks ignored without masked_loss


# --- the mask follows the image through resize, crop and flip ----------------------------------------------


def _pattern(size: tuple[int, int]) -> np.ndarray:
    """255 in the top-left block (x < 80, y < 64 of a 192x128 image, scaled), 0 elsewhere: asymmetric."""
    w, h = size
    pattern = np.zeros((h, w), dtype=np.uint8)
    pattern[: h // 2, : w * 80 // 192] = 255
    return pattern


def test_mask_follows_the_images_resize_crop_and_flip(tmp_path: Path):
    # 192x128 at resolution 64 without buckets: resized to 96x64 (box, factor 2), 16 px cut each side
    image = tmp_path / "a.png"
    rgb = np.dstack([_pattern((192, 128))] * 3)
    Image.fromarray(rgb).save(image)
    half = tmp_path / "a_mask.png"
    Image.fromarray(_pattern((96, 64)), "L").save(half)  # half size, same aspect ratio: resized up first
    full = tmp_path / "b_mask.png"
    Image.fromarray(_pattern((192, 128)), "L").save(full)
    settings = BucketSettings(resolution=64, enable_bucket=False)
    assignment = assign_buckets({"a.png": (192, 128)}, settings)["a.png"]
    assert assignment.bucket == (64, 64) and assignment.crop_box == (16, 0, 80, 64)

    # the same resize + crop as the image: its pixels and the mask agree after fitting
    fitted = data.fit_to_bucket(data.load_mask(full, image, alpha=False), assignment)
    assert np.array_equal(
        np.array(fitted), np.array(data.fit_to_bucket(data.load_image(image), assignment))[..., 0]
    )

    # latent size: white in image columns 0..23 (80/2 - 16) and rows 0..31 -> latent cols 0..2, rows 0..3
    expected = torch.zeros(1, 8, 8)
    expected[:, :4, :3] = 1.0
    for mask in (full, half):
        weights = data.mask_to_latent(data.load_mask(mask, image, alpha=False), assignment, (8, 8))
        assert torch.allclose(weights, expected, atol=0.05)  # half-size mask: Lanczos blurs its edge
    weights = data.mask_to_latent(data.load_mask(full, image, alpha=False), assignment, (8, 8))
    assert torch.equal(weights, expected)

    # flip_aug: a flipped sample gets the mirrored mask (latent cols 5..7), like its latents
    masks = [torch.stack([weights, torch.ones_like(weights)])]
    rows = data.mask_rows(masks, 0, torch.tensor([0, 0, 1]), torch.tensor([False, True, True]))
    assert torch.equal(rows[0], expected)
    assert torch.equal(rows[1], torch.flip(expected, dims=[2]))
    assert rows[1][0, :4, 5:].eq(1).all() and rows[1][0, :, :5].eq(0).all()
    assert torch.equal(rows[2], torch.ones_like(weights))

    # the alpha channel goes the same way
    rgba = tmp_path / "c.png"
    Image.fromarray(np.dstack([rgb, _pattern((192, 128))]), "RGBA").save(rgba)
    alpha = data.mask_to_latent(data.load_mask(None, rgba, alpha=True), assignment, (8, 8))
    assert torch.equal(alpha, expected)
    assert data.load_mask(None, image, alpha=True).getextrema() == (255, 255)  # no alpha: all trained
    assert data.load_mask(None, image, alpha=False) is None


def test_cache_loss_masks_rows_and_no_masks(tmp_path: Path):
    for name, value in (("a", 0), ("b", 255)):
        Image.new("RGB", (64, 64), (value, 0, 0)).save(tmp_path / f"{name}.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "b_mask.png")
    assignments = assign_buckets({"a.png": (64, 64), "b.png": (64, 64)}, BucketSettings(resolution=64))
    latents = data.BucketLatents(
        sizes=[(64, 64)],
        latents=[torch.zeros(2, 4, 8, 8)],
        flipped=None,
        image_bucket=[0, 0],
        image_row=[1, 0],  # b.png is row 0
    )
    paths = ("a.png", "b.png")
    masks = data.cache_loss_masks(tmp_path, latents, paths, assignments, {"b.png": "b_mask.png"}, alpha=False)
    assert masks is not None and masks[0].shape == (2, 1, 8, 8)
    assert masks[0][0].eq(0).all() and masks[0][1].eq(1).all()  # b masked out, a (no mask) trained fully
    assert data.cache_loss_masks(tmp_path, latents, paths, assignments, {}, alpha=False) is None


def test_a_mask_that_does_not_fit_its_image_is_refused(models: Path, tmp_path: Path):
    dataset = mask_files_dataset(tmp_path / "d", noise_seed=1)
    Image.new("L", (64, 32), 0).save(dataset / FOLDER / "ignored_mask.png")  # 2:1 for a square image
    with pytest.raises(DatasetError) as err:
        _train(models, dataset, tmp_path / "out", masked_loss=True)
    assert err.value.code == "mask_size_mismatch"
