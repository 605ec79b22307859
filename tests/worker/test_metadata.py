"""ss_* / modelspec.* metadata as sd-scripts' train_network.py writes it, the base-model hashes as A1111
computes them (cached per model file), and the SD1 / SD2 / SDXL decision A1111 and Forge make from it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from shared.config.plan import compute_plan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import DatasetLayout, ImageEntry, Subset
from worker.training import metadata, model_hashes
from worker.training.model_hashes import ModelHashes


def _layout() -> DatasetLayout:
    def images(folder: str, n: int) -> tuple[ImageEntry, ...]:
        return tuple(ImageEntry(f"{folder}/{i}.png", None) for i in range(n))

    return DatasetLayout(
        kind="kohya",
        subsets=(
            Subset("img/6_lisabp woman", 6, "lisabp", "woman", False, images("img/6_lisabp woman", 3)),
            Subset("img/2_zkx", 2, "zkx", None, False, images("img/2_zkx", 2)),
            Subset("reg/1_woman", 1, None, "woman", True, images("reg/1_woman", 4)),
        ),
    )


def _metadata(family: str, v: bool = False, **config_fields) -> dict[str, str]:
    config = TrainingConfig(base_model="models/base.safetensors", output_name="out", **config_fields)
    layout = _layout()
    plan = compute_plan(layout, config)
    return metadata.training_metadata(
        config,
        plan,
        seed=1,
        optimizer="torch.optim.AdamW",
        tag_freq={"6_lisabp woman": {"lisabp": 3}},
        dirs=metadata.dataset_dirs(layout, Path("ds"), reg=False),
        reg_dirs=metadata.dataset_dirs(layout, Path("ds"), reg=True),
        started_at=1_700_000_000.5,
        family=family,
        v_parameterization=v,
        session_id=12345,
        layout=layout,
        dataset_dir=Path("ds"),
        model_hashes=ModelHashes(legacy="0123abcd", sha256="f" * 64),
    )


# --- how A1111 and Forge classify a LoRA --------------------------------------------------------------------


def webui_sd_version(meta: dict[str, str]) -> str:
    """NetworkOnDisk.detect_version, as read in AUTOMATIC1111/stable-diffusion-webui and
    lllyasviel/stable-diffusion-webui-forge extensions-builtin/Lora/network.py (the same in both): an
    ss_base_model_version starting "sdxl_" is SDXL, else ss_v2 == "True" is SD2, else any metadata is SD1."""
    if str(meta.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(meta.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if meta else "Unknown"


@pytest.mark.parametrize(
    ("family", "v", "want"),
    [("sd1", False, "SD1"), ("sd2", False, "SD2"), ("sd2", True, "SD2"), ("sdxl", False, "SDXL")],
)
def test_webui_classifies_each_family(family: str, v: bool, want: str):
    meta = _metadata(family, v)
    assert webui_sd_version(meta) == want
    assert meta["ss_v2"] == str(family == "sd2")  # SDXL files must not say v2, or old readers take SD2


# --- the fields sd-scripts writes ---------------------------------------------------------------------------

# Every key train_network.py (kohya-ss/sd-scripts, commit 48d368f) puts in a LoRA's metadata for a run without
# --vae, --network_args or --no_metadata (ss_epoch / ss_steps / ss_training_finished_at are per file).
SD_SCRIPTS_RUN_KEYS = [
    "ss_session_id",
    "ss_training_started_at",
    "ss_output_name",
    "ss_learning_rate",
    "ss_text_encoder_lr",
    "ss_unet_lr",
    "ss_num_train_images",
    "ss_num_validation_images",
    "ss_num_reg_images",
    "ss_num_batches_per_epoch",
    "ss_num_epochs",
    "ss_gradient_checkpointing",
    "ss_gradient_accumulation_steps",
    "ss_max_train_steps",
    "ss_lr_warmup_steps",
    "ss_lr_scheduler",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_dropout",
    "ss_mixed_precision",
    "ss_full_fp16",
    "ss_v2",
    "ss_base_model_version",
    "ss_clip_skip",
    "ss_max_token_length",
    "ss_cache_latents",
    "ss_seed",
    "ss_lowram",
    "ss_noise_offset",
    "ss_multires_noise_iterations",
    "ss_multires_noise_discount",
    "ss_adaptive_noise_scale",
    "ss_zero_terminal_snr",
    "ss_training_comment",
    "ss_sd_scripts_commit_hash",
    "ss_optimizer",
    "ss_max_grad_norm",
    "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs",
    "ss_caption_tag_dropout_rate",
    "ss_face_crop_aug_range",
    "ss_prior_loss_weight",
    "ss_min_snr_gamma",
    "ss_scale_weight_norms",
    "ss_ip_noise_gamma",
    "ss_debiased_estimation",
    "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength",
    "ss_loss_type",
    "ss_huber_schedule",
    "ss_huber_scale",
    "ss_huber_c",
    "ss_fp8_base",
    "ss_fp8_base_unet",
    "ss_validation_seed",
    "ss_validation_split",
    "ss_max_validation_steps",
    "ss_validate_every_n_epochs",
    "ss_validate_every_n_steps",
    "ss_resize_interpolation",
    "ss_datasets",
    "ss_tag_frequency",
    "ss_dataset_dirs",
    "ss_batch_size_per_device",
    "ss_total_batch_size",
    "ss_resolution",
    "ss_color_aug",
    "ss_flip_aug",
    "ss_random_crop",
    "ss_shuffle_caption",
    "ss_enable_bucket",
    "ss_bucket_no_upscale",
    "ss_min_bucket_reso",
    "ss_max_bucket_reso",
    "ss_keep_tokens",
    "ss_reg_dataset_dirs",
    "ss_bucket_info",
    "ss_sd_model_hash",
    "ss_new_sd_model_hash",
    "ss_sd_model_name",
]
# sai_model_spec.build_metadata for a LoRA without --metadata_* options (date: per file).
MODELSPEC_KEYS = [
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.implementation",
    "modelspec.title",
    "modelspec.resolution",
    "modelspec.prediction_type",
    "modelspec.implementation_version",
]


def test_run_metadata_has_sd_scripts_keys_and_formats():
    meta = _metadata("sd1", clip_skip=2)
    meta.update(metadata.option_metadata(TrainingConfig(base_model="b", clip_skip=2)))
    missing = [k for k in SD_SCRIPTS_RUN_KEYS + MODELSPEC_KEYS if k not in meta]
    assert missing == []
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_session_id"] == "12345"
    # sd-scripts counts images times repeats: 3 x 6 + 2 x 2 training, 4 x 1 regularization
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == ("22", "4")
    assert (meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"]) == ("0123abcd", "f" * 64)
    assert meta["ss_sd_model_name"] == "base.safetensors"
    assert (meta["ss_loss_type"], meta["ss_network_dropout"], meta["ss_full_fp16"]) == ("l2", "None", "False")
    assert meta["ss_sd_scripts_commit_hash"].startswith("lorabake/")
    assert meta["modelspec.encoder_layer"] == "2"  # clip skip, as sd-scripts writes it


def test_trigger_words_where_tools_look():
    meta = _metadata("sdxl")
    assert meta["ss_training_comment"] == "lisabp, zkx"
    assert meta["modelspec.trigger_phrase"] == "lisabp, zkx"
    no_layout = metadata.training_metadata(
        TrainingConfig(base_model="b", trigger_word="sks"),
        compute_plan(_layout(), TrainingConfig(base_model="b")),
        seed=1,
        optimizer="x",
        tag_freq={},
        dirs={},
        reg_dirs={},
        started_at=0.0,
    )
    assert no_layout["ss_training_comment"] == no_layout["modelspec.trigger_phrase"] == "sks"
    assert no_layout["ss_session_id"].isdigit() and 0 <= int(no_layout["ss_session_id"]) <= 2**32
    assert "ss_datasets" not in no_layout and "ss_sd_model_hash" not in no_layout


def test_ss_datasets_as_sd_scripts_packs_them():
    datasets = json.loads(_metadata("sd1")["ss_datasets"])
    assert len(datasets) == 1
    ds = datasets[0]
    assert (ds["is_dreambooth"], ds["num_train_images"], ds["num_reg_images"]) == (True, 22, 4)
    assert ds["tag_frequency"] == {"6_lisabp woman": {"lisabp": 3}}
    subsets = {s["image_dir"]: s for s in ds["subsets"]}
    assert set(subsets) == {"6_lisabp woman", "2_zkx", "1_woman"}
    first = subsets["6_lisabp woman"]
    assert (first["img_count"], first["num_repeats"], first["class_tokens"], first["is_reg"]) == (
        3,
        6,
        "lisabp woman",
        False,
    )
    assert subsets["1_woman"]["is_reg"] is True


# --- base model hashes --------------------------------------------------------------------------------------


def _a1111_model_hash(path: Path) -> str:
    """sd-scripts train_util.model_hash / A1111's old hash: sha256 of 0x10000 bytes at 0x100000, 8 hex."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@pytest.mark.parametrize("size", [10, 0x100000 + 100, 0x100000 * 3 + 7])
def test_single_file_hashes_are_a1111s(tmp_path: Path, size: int):
    path = tmp_path / "m.safetensors"
    path.write_bytes(os.urandom(size))
    got = model_hashes.hash_file(path)
    assert got.legacy == _a1111_model_hash(path)
    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_hashes_are_cached_per_file_across_processes(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(os.urandom(2 * 0x100000))
    cache = tmp_path / "data" / "model-hashes.json"
    first = model_hashes.base_model_hashes(path, cache)
    entry = json.loads(cache.read_text())[str(path.resolve())]
    assert entry["sha256"] == first.sha256 and entry["size"] == path.stat().st_size

    calls: list[Path] = []
    monkeypatch.setattr(model_hashes, "hash_file", lambda p: calls.append(p) or first)
    monkeypatch.setattr(model_hashes, "_memory", {})  # a new worker process: only the file remains
    assert model_hashes.base_model_hashes(path, cache) == first and calls == []

    path.write_bytes(os.urandom(2 * 0x100000 + 1))  # another model under the same name is hashed again
    model_hashes.base_model_hashes(path, cache)
    assert calls == [path.resolve()]


def test_diffusers_folder_hash_is_a_manifest_of_its_weights(tmp_path: Path):
    folder = tmp_path / "pipe"
    for rel, data in {
        "unet/diffusion_pytorch_model.safetensors": b"u",
        "vae/model.safetensors": b"v",
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "model_index.json").write_text("{}")
    manifest = "".join(
        f"{rel}\t{hashlib.sha256(data).hexdigest()}\n"
        for rel, data in (("unet/diffusion_pytorch_model.safetensors", b"u"), ("vae/model.safetensors", b"v"))
    )
    want = hashlib.sha256(manifest.encode()).hexdigest()
    assert model_hashes.base_model_hashes(folder) == ModelHashes(legacy=want[:8], sha256=want)
