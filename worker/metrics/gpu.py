"""GPU memory of this process, per CUDA device, as torch's caching allocator counts it."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # the CUDA index as this process sees it (after CUDA_VISIBLE_DEVICES)
    allocated: int  # bytes held by tensors now
    peak: int  # the most held at once since the process started (one job: the child is fresh)


def device_memory() -> list[DeviceMemory]:
    """Nothing on a CPU, or where this process never started CUDA: reading the numbers must neither import
    torch nor create a CUDA context (hundreds of MiB on every device) for a process that had none."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return []
    return [
        DeviceMemory(str(index), torch.cuda.memory_allocated(index), torch.cuda.max_memory_allocated(index))
        for index in range(torch.cuda.device_count())
    ]
