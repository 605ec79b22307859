"""The GPUs of this host, as `nvidia-smi` lists them: what a worker reports with its heartbeat (the queue view
shows it; the estimates and the scheduler read it). No torch here: the heartbeat runs in the worker's duties
process, which does not load it."""

from __future__ import annotations

import shutil
import subprocess
from typing import TypedDict

QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


class Gpu(TypedDict):
    name: str
    memory_mb: int  # total memory, MiB as nvidia-smi counts it


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`NVIDIA H100 80GB HBM3, 81559` per line; lines that do not read so are skipped."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip() and memory.strip().isdigit():
            gpus.append({"name": name.strip(), "memory_mb": int(memory.strip())})
    return gpus


def local_gpus(visible: str | None = None) -> list[Gpu]:
    """This host's GPUs (those in CUDA_VISIBLE_DEVICES when `visible` names indexes); [] without a driver."""
    if shutil.which(QUERY[0]) is None:
        return []
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = parse_nvidia_smi(out)
    if visible and all(part.strip().isdigit() for part in visible.split(",")):
        gpus = [gpus[int(i)] for i in visible.split(",") if int(i) < len(gpus)]
    return gpus
