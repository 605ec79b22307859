"""Loading a LoRA file the way users do (diffusers' load_lora_weights) and comparing pipeline outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from worker.devtools.tiny_models import build_tiny_sd15_pipeline

PROMPT = "lisabp woman, color 1"


def render(pipe) -> np.ndarray:  # noqa: ANN001
    generator = torch.Generator().manual_seed(1234)
    return pipe(
        PROMPT, num_inference_steps=3, height=64, width=64, output_type="np", generator=generator
    ).images


def base_pipeline():  # noqa: ANN201
    return build_tiny_sd15_pipeline()


def render_with_lora(lora: Path) -> np.ndarray:
    pipe = base_pipeline()
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    return render(pipe)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
