"""mixed_precision "auto" (the default) follows the worker: no autocast on a CPU, bf16 / fp16 on GPUs."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.config.spec import TrainingConfig
from tests.worker.test_training_options import BASE, make_dataset
from worker.training.engine import resolve_precision, train_lora
from worker.training.export import read_metadata
from worker.training.families.base import WEIGHT_DTYPES


def test_auto_on_a_cpu_is_float32_and_explicit_values_stay():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "no" and WEIGHT_DTYPES["no"] is torch.float32
    assert [resolve_precision(p, cpu) for p in ("no", "fp16", "bf16")] == ["no", "fp16", "bf16"]


def test_the_default_trains_in_float32_on_a_cpu_and_says_so(tmp_path: Path, models_dir: Path):
    fields = {k: v for k, v in BASE.items() if k != "mixed_precision"}
    config = TrainingConfig(**fields, output_name="auto", epochs=1)
    assert config.mixed_precision == "auto"
    dataset = make_dataset(tmp_path / "d")
    result = train_lora(config, dataset, tmp_path / "o", models_dir=models_dir, device="cpu")
    meta = read_metadata(result.files[-1].path)
    assert meta["ss_mixed_precision"] == "no"  # what the run did, not "auto"
    assert result.pipeline.unet.dtype == torch.float32
