"""Base weights in less memory, on the CPU: a FLUX.1 transformer of full width (3072 hidden, 24 heads, T5's
4096-wide context) and reduced depth, its frozen weights stored as the worker stores them for
base_quantization none (bf16) / fp8 / int8 (worker/training/base_quantization.py), with rank-16 LoRA on
every block Linear as a run adds it. Printed per mode, as ratios to bf16:
- weights: bytes held by the transformer's frozen parameters and buffers (goal: fp8 and int8 <= 0.55x);
- resident: the process' RSS once the model is loaded, quantized and given its LoRA;
- step peak: the peak RSS over one LoRA training step (forward and backward at 512 px, batch 1, 64 text
  tokens), measured from the loaded state (Linux: VmHWM, reset through /proc/self/clear_refs).
Each mode runs in its own fresh process.

    .venv/bin/python bench/memory.py [--double 2] [--single 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("none", "fp8", "int8")
RANK, SIDE, TOKENS = 16, 512, 64


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(mode: str, double: int, single: int) -> dict:
    import torch
    from diffusers import FluxTransformer2DModel

    from worker.training import base_quantization, flux_names, network
    from worker.training.families.flux import image_ids, pack

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16, as the worker loads FLUX.1 (no float32 copy)
    transformer = FluxTransformer2DModel(
        num_layers=double, num_single_layers=single, guidance_embeds=True
    ).requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in transformer.parameters())
    base_quantization.quantize_frozen(transformer, mode, torch.bfloat16)
    weights = base_quantization.frozen_bytes(transformer)
    targets = flux_names.flux_lora_target_paths(transformer)
    transformer.add_adapter(network.lora_config(RANK, RANK, targets), adapter_name=network.ADAPTER_NAME)
    lora = network.trainable_parameters(transformer)
    for p in lora:
        p.data = p.data.float()
    resident = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak of the step alone
    latent = SIDE // 8
    gen = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = transformer(
            hidden_states=pack(torch.randn(1, 16, latent, latent, generator=gen)).bfloat16(),
            encoder_hidden_states=torch.randn(1, TOKENS, 4096, generator=gen).bfloat16(),
            pooled_projections=torch.randn(1, 768, generator=gen).bfloat16(),
            timestep=torch.tensor([0.5], dtype=torch.bfloat16),
            img_ids=image_ids(latent, latent, torch.device("cpu")),
            txt_ids=torch.zeros(TOKENS, 3),
            guidance=torch.tensor([1.0], dtype=torch.bfloat16),
            return_dict=False,
        )[0]
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in lora)
    return {
        "mode": mode,
        "params": params,
        "weight_bytes": weights,
        "resident_kib": resident,
        "step_peak_kib": _rss_kib("VmHWM"),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--double", type=int, default=2, help="double-stream blocks (FLUX.1: 19)")
    parser.add_argument("--single", type=int, default=4, help="single-stream blocks (FLUX.1: 38)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.double, args.single)))
        return
    rows = []
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, "--double", str(args.double)]
        command += ["--single", str(args.single)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(
        f"FLUX.1 transformer, full width, {args.double} double + {args.single} single blocks "
        f"({base['params'] / 1e9:.2f} B parameters), rank {RANK} LoRA, one step at {SIDE} px"
    )
    print("| base weights | weights | x bf16 | resident | x bf16 | step peak RSS | x bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        name = "bf16 (none)" if row["mode"] == "none" else row["mode"]
        cells = [
            f"{row['weight_bytes'] / 2**30:.2f} GiB",
            f"{row['weight_bytes'] / base['weight_bytes']:.2f}",
            f"{row['resident_kib'] / 2**20:.2f} GiB",
            f"{row['resident_kib'] / base['resident_kib']:.2f}",
            f"{row['step_peak_kib'] / 2**20:.2f} GiB",
            f"{row['step_peak_kib'] / base['step_peak_kib']:.2f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
