"""The files a fixed-seed tiny SD1.5, SD2-v and SDXL training writes (LoRA and LoCon) keep their exact bytes.

The digests below were recorded before the engine's family code moved behind worker/training/families/ (the
seam FLUX and the later families plug into); a change that moves a byte of an SD file fails here. Each digest
covers every tensor (name, dtype, shape, bytes) and every metadata field except those that differ per launch
by design (the session id, start/finish times, modelspec.date). Recorded on this project's CPU machine with
torch 2.13.0 / diffusers 0.42.1; regenerate them only for a change that means to alter the files, and say so
in its commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_models import save_tiny_sd2v, save_tiny_sd15, save_tiny_sdxl
from worker.training.engine import train_lora

VOLATILE_METADATA = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "modelspec.date"}

RECORDED: dict[str, str] = {
    "sd15-lora-e1": "18e3d2df234133b7df03c15b90ebf9f6d79f566b96037493d461bce5fe73daf8",
    "sd15-lora-e2": "09b698f90a782df687cfcc9e9aad548c6a22148f5e64df8c02d5d079ae24e3ab",
    "sd15-locon-e1": "ac52f55688fbe0f2a129611da5450d10f981a034dc345f2a2f4d71f7d6988a87",
    "sd15-locon-e2": "b660a3be7eff7a18a5de47927f937b4bbd0b7b694d2888adc33ace28adb3bea6",
    "sd2v-lora-e1": "9e620c8fbfeff5b52063b0a6ff9c5c74a3e5cdc86b420c10a883f98943fd7d2d",
    "sd2v-lora-e2": "514ffc9c158b6b59a2f68e22dbfd5fc9b16224597c30ed0a0f674326b93e573c",
    "sd2v-locon-e1": "96d3f9271226a3a2085257d68bb90f13afcf896e7827d43225dffb1fe4eb14a7",
    "sd2v-locon-e2": "7e30294fae41e6fa40370adc47096d9d0452e9565c27e92040e36ef47f6faaa4",
    "sdxl-lora-e1": "38f20e16dfd452c02da02ced76bbe10b41f09c10f4cb506d5873f049c562cf45",
    "sdxl-lora-e2": "f037bc50f731bcd1eecb69d1d9cbb951968145e0e0f19437939c6c1195822665",
    "sdxl-locon-e1": "27e799ecc1014d6a7c2c9b7a22e6af5841ada6d09b5bfae46de5aba103a7c73b",
    "sdxl-locon-e2": "cfe724cfcdedad6f1d7e42d76a712f179d846388acbd780f759db75d93acd929",
}


def file_digest(path: Path, dataset_dir: Path) -> str:
    digest = hashlib.sha256()
    with safe_open(str(path), framework="np") as f:
        metadata = {k: v for k, v in (f.metadata() or {}).items() if k not in VOLATILE_METADATA}
        text = json.dumps(metadata, sort_keys=True).replace(str(dataset_dir), "DATASET")
        digest.update(text.encode())
        for key in sorted(f.keys()):
            array = f.get_tensor(key)
            digest.update(f"{key}|{array.dtype}|{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_sd15(root / "sd15")
    save_tiny_sd2v(root / "sd2v")
    save_tiny_sdxl(root / "sdxl")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "img" / "2_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.3, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    return root


def _config(base: str, network: str) -> TrainingConfig:
    extra = {"conv_dim": 2, "conv_alpha": 1.0} if network == "locon" else {}
    return TrainingConfig(
        base_model=base,
        output_name=f"{base}-{network}",
        resolution=64,
        enable_bucket=False,
        mixed_precision="no",
        batch_size=2,
        seed=11,
        epochs=2,
        network_dim=4,
        network_alpha=2.0,
        unet_lr=1e-3,
        text_encoder_lr=5e-4,
        save_precision="float",
        trigger_word="sks",
        **extra,
    )


CASES = [(base, network) for base in ("sd15", "sd2v", "sdxl") for network in ("lora", "locon")]


@pytest.mark.parametrize(("base", "network"), CASES)
def test_sd_family_files_keep_their_bytes(
    base: str, network: str, models: Path, dataset: Path, tmp_path: Path
):
    result = train_lora(_config(base, network), dataset, tmp_path, models_dir=models, device="cpu")
    digests = [file_digest(f.path, dataset) for f in result.files]
    assert [f.epoch for f in result.files] == [1, 2]
    assert digests == [RECORDED[f"{base}-{network}-e1"], RECORDED[f"{base}-{network}-e2"]]
