"""The name of the card this worker trains on: run speeds are recorded (and predicted) per GPU model."""

from __future__ import annotations

import functools


@functools.cache
def gpu_model() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"
