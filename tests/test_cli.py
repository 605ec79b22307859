"""`lorabake train`: the engine alone, as a Kohya user runs a script, no service involved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from tests.support.datasets import image_bytes
from tests.support.stack import process_env


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorabake.cli", *args],
        env=process_env({}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def make_dataset(root: Path) -> Path:
    folder = root / "img" / "3_zkz dog"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(image_bytes((40 * i, 90, 200)))
        (folder / f"{i}.txt").write_text(f"zkz, dog, color {i}")
    return root


def test_train_writes_kohya_files(tmp_path, models_dir):
    config = {
        "base_model": "tiny-sd15",
        "output_name": "zkz",
        "resolution": 64,
        "enable_bucket": False,
        "epochs": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "mixed_precision": "no",
        "seed": 5,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run_cli(
        "train",
        str(tmp_path / "config.json"),
        str(make_dataset(tmp_path / "data")),
        str(tmp_path / "out"),
        "--models-dir",
        str(models_dir),
    )
    assert done.returncode == 0, done.stderr
    assert "step 12/12" in done.stdout  # 2 images x 3 repeats x 2 epochs / batch 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == [
        "zkz-000001.safetensors",
        "zkz.safetensors",
    ]
    with safe_open(str(tmp_path / "out" / "zkz.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_seed"]) == ("4", "2.0", "5")


def test_bad_config_is_a_clear_error(tmp_path, models_dir):
    (tmp_path / "config.json").write_text(json.dumps({"base_model": "tiny-sd15", "network_dim": 0}))
    done = run_cli(
        "train",
        str(tmp_path / "config.json"),
        str(make_dataset(tmp_path / "data")),
        str(tmp_path / "out"),
        "--models-dir",
        str(models_dir),
    )
    assert done.returncode != 0
    assert "network_dim" in done.stderr and "Traceback" not in done.stderr
