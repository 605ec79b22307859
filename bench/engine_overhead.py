"""Engine overhead: our engine's seconds per step against a bare diffusers + peft loop on the same tiny
model, data and settings (the floor: the same forward, backward and optimizer step, nothing else), for the
tiny SD1.5 model (DDPM) or, with --family flux, the tiny FLUX.1 dev model (rectified flow).

Each side runs in its own fresh process (so each has its own peak RSS), alternating, several rounds; the
ratio of the medians is printed. Absolute times vary from run to run on shared machines; the ratio is what
is compared. Goal: engine/floor <= 1.05.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_overhead.py [--rounds 3] [--steps 40] [--family sd|flux]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESOLUTION, BATCH, RANK, LR, IMAGES, WARMUP = 64, 2, 4, 1e-4, 8, 5


def make_inputs(root: Path) -> tuple[Path, Path]:
    from PIL import Image

    from worker.devtools.tiny_flux import save_tiny_flux
    from worker.devtools.tiny_models import save_tiny_sd15

    models = root / "models"
    save_tiny_sd15(models / "tiny-sd15")
    save_tiny_flux(models / "tiny-flux")
    data = root / "data" / "img" / "1_bench thing"
    data.mkdir(parents=True)
    for i in range(IMAGES):
        Image.new("RGB", (RESOLUTION, RESOLUTION), (30 * i, 255 - 30 * i, 90)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"bench thing, color {i}")
    return models, root / "data"


T5_TOKENS = 32  # the tiny FLUX model's caption length (both sides)


def engine_config(steps: int, family: str = "sd") -> dict:
    epochs = max(1, round(steps * BATCH / IMAGES))
    if family == "flux":  # sd-scripts' FLUX defaults: shift sampling, guidance 1, transformer only
        return {
            "base_model": "tiny-flux",
            "resolution": RESOLUTION,
            "enable_bucket": False,
            "batch_size": BATCH,
            "epochs": epochs,
            "network_dim": RANK,
            "network_alpha": RANK,
            "unet_lr": LR,
            "mixed_precision": "no",
            "max_grad_norm": 0,
            "save_every_n_epochs": None,
            "seed": 1,
            "t5xxl_max_token_length": T5_TOKENS,
        }
    return {
        "base_model": "tiny-sd15",
        "resolution": RESOLUTION,
        "enable_bucket": False,
        "batch_size": BATCH,
        "epochs": epochs,
        "network_dim": RANK,
        "network_alpha": RANK,
        "network_target": "attention",
        "unet_lr": LR,
        "text_encoder_lr": 0,
        "mixed_precision": "no",
        "max_grad_norm": 0,
        "save_every_n_epochs": None,
        "seed": 1,
    }


def run_engine(models: Path, data: Path, steps: int, family: str = "sd") -> list[float]:
    from shared.config.spec import TrainingConfig
    from worker.training.engine import EngineHooks, train_lora

    stamps: list[float] = []
    hooks = EngineHooks(on_progress=lambda _p: stamps.append(time.perf_counter()))
    with tempfile.TemporaryDirectory() as out:
        config = TrainingConfig(**engine_config(steps, family))
        train_lora(config, data, Path(out), models_dir=models, hooks=hooks)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def run_floor(models: Path, data: Path, steps: int) -> list[float]:
    """A hand-written minimal loop: cached latents and text embeddings, PEFT LoRA on the UNet attention
    projections, DDPM noise, MSE, AdamW. What any LoRA trainer must do per step, and nothing more."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from PIL import Image

    torch.manual_seed(1)
    pipe = StableDiffusionPipeline.from_pretrained(models / "tiny-sd15", local_files_only=True)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for m in (unet, vae, te):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    files = sorted((data / "img" / "1_bench thing").glob("*.png"))
    pixels = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
            for f in files
        ]
    )
    captions = [f.with_suffix(".txt").read_text() for f in files]
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        ids = tok(
            captions,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        cond = te(ids)[0]
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(params, lr=LR)
    unet.train()
    stamps = []
    for _ in range(steps + 1):
        idx = torch.randperm(len(files))[:BATCH]
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        pred = unet(scheduler.add_noise(x0, noise, t), t, cond[idx]).sample
        F.mse_loss(pred.float(), noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def run_floor_flux(models: Path, data: Path, steps: int) -> list[float]:
    """The same for FLUX.1: cached packed latents and text embeddings, PEFT LoRA on every Linear of the
    double and single blocks (sd-scripts' targets), shifted-sigmoid sigmas, velocity MSE, AdamW."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from PIL import Image

    torch.manual_seed(1)
    pipe = FluxPipeline.from_pretrained(models / "tiny-flux", local_files_only=True)
    transformer, vae = pipe.transformer, pipe.vae
    for m in (transformer, vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
    blocks = ("transformer_blocks.", "single_transformer_blocks.")
    targets = [
        n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(blocks)
    ]
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets))
    params = [p for p in transformer.parameters() if p.requires_grad]
    files = sorted((data / "img" / "1_bench thing").glob("*.png"))
    pixels = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
            for f in files
        ]
    )
    captions = [f.with_suffix(".txt").read_text() for f in files]
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        t5, pooled, txt_ids = pipe.encode_prompt(captions, captions, max_sequence_length=T5_TOKENS)
    b, c, h, w = latents.shape
    packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    optimizer = torch.optim.AdamW(params, lr=LR)
    transformer.train()
    stamps = []
    for _ in range(steps + 1):
        idx = torch.randperm(len(files))[:BATCH]
        x0 = packed[idx]
        noise = torch.randn_like(x0)
        t = torch.sigmoid(torch.randn(BATCH))
        sigma = 3.1582 * t / (1 + 2.1582 * t)
        s = sigma.view(-1, 1, 1)
        pred = transformer(
            hidden_states=(1 - s) * x0 + s * noise,
            encoder_hidden_states=t5[idx],
            pooled_projections=pooled[idx],
            timestep=sigma,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=torch.ones(BATCH),
            return_dict=False,
        )[0]
        F.mse_loss(pred.float(), noise - x0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def child(kind: str, root: Path, steps: int, family: str = "sd") -> None:
    models, data = root / "models", root / "data"
    if kind == "engine":
        times = run_engine(models, data, steps, family)
    else:
        times = (run_floor_flux if family == "flux" else run_floor)(models, data, steps)
    times = times[WARMUP:]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "kind": kind,
                "median_s": statistics.median(times),
                "steps": len(times),
                "peak_rss_mb": round(peak_mb, 1),
            }
        )
    )


def profile_engine(steps: int) -> None:
    """Where an engine step's time goes: calls per step of the heavy kernels next to everything of ours."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        models, data = make_inputs(Path(tmp))
        profiler = cProfile.Profile()
        profiler.enable()
        run_engine(models, data, steps)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile", action="store_true", help="one engine run under cProfile, top calls")
    parser.add_argument("--family", choices=["sd", "flux"], default="sd")
    parser.add_argument("--child", choices=["engine", "floor"])
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.steps, args.family)
        return
    if args.profile:
        profile_engine(args.steps)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_inputs(root)
        results: dict[str, list[dict]] = {"engine": [], "floor": []}
        for round_ in range(args.rounds):
            for kind in ("floor", "engine") if round_ % 2 else ("engine", "floor"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        kind,
                        "--root",
                        str(root),
                        "--steps",
                        str(args.steps),
                        "--family",
                        args.family,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[kind].append(result)
                print(
                    f"round {round_ + 1} {kind:6s} {result['median_s'] * 1000:7.1f} ms/step  "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    engine = statistics.median(r["median_s"] for r in results["engine"])
    floor = statistics.median(r["median_s"] for r in results["floor"])
    rss_e = max(r["peak_rss_mb"] for r in results["engine"])
    rss_f = max(r["peak_rss_mb"] for r in results["floor"])
    print(
        f"\n{args.family}: engine {engine * 1000:.1f} ms/step, floor {floor * 1000:.1f} ms/step, "
        f"ratio engine/floor = {engine / floor:.3f} (goal <= 1.05)"
    )
    print(f"peak RSS engine {rss_e:.0f} MB, floor {rss_f:.0f} MB, ratio {rss_e / rss_f:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
