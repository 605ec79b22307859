"""GPU training speed and memory at real SD1.5, SDXL, FLUX.1 dev and Chroma1-HD sizes (random weights: speed
does not depend on them), plus the CUDA-only correctness checks the CPU suite cannot make: bf16 and fp16 mixed
precision, AdamW8bit, SDPA attention. Run on a GPU machine:

    HF_HUB_OFFLINE=1 python bench/gpu_train.py [--steps 20] [--out results.json]

`--smoke` runs the same code on tiny models on the CPU (to check the script itself, no numbers).
Prints one JSON line per run and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP = 3


def real_sd15(root: Path) -> Path:
    """SD1.5's shapes (UNet 860M, CLIP ViT-L text encoder, VAE) with random weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from worker.devtools.tiny_models import build_tiny_clip_tokenizer, build_tiny_scheduler

    tokenizer = build_tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(_clip(tokenizer, hidden=768, layers=12, heads=12, act="quick_gelu"))
    pipe = StableDiffusionPipeline(
        vae=_vae(512, 0.18215),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd15", safe_serialization=True)
    return root / "sd15"


def real_sdxl(root: Path) -> Path:
    """SDXL base's shapes (UNet 2.6B, transformer depth 1/2/10, CLIP-L + OpenCLIP-bigG), random weights."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from worker.devtools.tiny_models import build_tiny_clip_tokenizer, build_tiny_scheduler

    tokenizer, tokenizer_2 = build_tiny_clip_tokenizer(), build_tiny_clip_tokenizer(pad_token="!")
    unet = UNet2DConditionModel(
        sample_size=128,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    te1 = CLIPTextModel(_clip(tokenizer, hidden=768, layers=12, heads=12, act="quick_gelu"))
    te2 = CLIPTextModelWithProjection(
        _clip(tokenizer_2, hidden=1280, layers=32, heads=20, act="gelu", projection_dim=1280)
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(1024, 0.13025),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=build_tiny_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(root / "sdxl", safe_serialization=True)
    return root / "sdxl"


def real_flux1(root: Path) -> Path:
    """FLUX.1 dev's transformer (11.9B: 19 double + 38 single blocks, width 3072), CLIP-L and the 16-channel
    VAE at their real sizes, random weights built on the GPU in bf16 (no download). T5-XXL keeps its width
    (4096, what the transformer reads) but one layer: its outputs are cached before training, so its depth
    changes neither the step time nor the training's VRAM."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from worker.devtools.tiny_flux import DEV_SCHEDULER, build_tiny_t5_tokenizer
    from worker.devtools.tiny_models import build_tiny_clip_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, tokenizer_2 = build_tiny_clip_tokenizer(), build_tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(guidance_embeds=True)  # diffusers' defaults are FLUX.1's
            t5 = _t5_one_layer(tokenizer_2)
            clip = CLIPTextModel(_clip(tokenizer, hidden=768, layers=12, heads=12, act="quick_gelu"))
            vae = _flux_vae()
    finally:
        torch.set_default_dtype(previous)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER),
        vae=vae.float(),
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(root / "flux1", safe_serialization=True)
    del pipe, transformer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return root / "flux1"


def real_chroma(root: Path) -> Path:
    """Chroma1-HD's transformer (8.9B: FLUX.1's 19 double + 38 single blocks without the modulation Linears,
    plus the approximator; diffusers' ChromaTransformer2DModel defaults) and FLUX.1's VAE at real size, T5-XXL
    one layer deep as for FLUX.1 (cached before training). Random bf16 weights built on the GPU."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from worker.devtools.tiny_flux import CHROMA_SCHEDULER, build_tiny_t5_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = ChromaTransformer2DModel()
            t5 = _t5_one_layer(tokenizer)
            vae = _flux_vae()
    finally:
        torch.set_default_dtype(previous)
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**CHROMA_SCHEDULER),
        vae=vae.float(),
        text_encoder=t5,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(root / "chroma", safe_serialization=True)
    del pipe, transformer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return root / "chroma"


def _t5_one_layer(tokenizer):  # noqa: ANN001, ANN202
    """T5-XXL's width (4096, what the transformer reads) with one layer."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=1,
            num_heads=64,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _flux_vae():  # noqa: ANN202
    """FLUX.1's 16-channel VAE (BFL's ae.safetensors), which Chroma shares."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=16,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _clip(tokenizer, *, hidden: int, layers: int, heads: int, act: str, projection_dim: int | None = None):  # noqa: ANN001, ANN202
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _vae(sample_size: int, scaling_factor: float):  # noqa: ANN202
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def make_dataset(root: Path, side: int, images: int = 8) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / f"data{side}" / "img" / "1_bench thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"bench thing, sample {i}")
    return folder.parent.parent


def run(
    name: str,
    base: str,
    models: Path,
    data: Path,
    *,
    resolution: int,
    batch: int,
    precision: str,
    checkpointing: bool,
    optimizer: str,
    steps: int,
) -> dict:
    import torch

    from shared.config.spec import TrainingConfig
    from worker.training.engine import EngineHooks, train_lora

    images = 8
    config = TrainingConfig(
        base_model=base,
        resolution=resolution,
        enable_bucket=False,
        batch_size=batch,
        epochs=max(1, -(-(steps + WARMUP) * batch // images)),
        network_dim=16,
        network_alpha=16,
        text_encoder_lr=0,
        unet_lr=1e-4,
        optimizer=optimizer,
        mixed_precision=precision,
        gradient_checkpointing=checkpointing,
        save_every_n_epochs=None,
        seed=1,
        **({"t5xxl_max_token_length": 512} if base in ("flux1", "chroma") else {}),
    )
    stamps: list[float] = []
    losses: list[float] = []

    def on_progress(p) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        losses.append(p.loss)

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        result = train_lora(
            config, data, Path(out), models_dir=models, hooks=EngineHooks(on_progress=on_progress)
        )
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][WARMUP:]
    denoiser = getattr(result.pipeline, "unet", None) or result.pipeline.transformer
    processors = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
    row = {
        "run": name,
        "resolution": resolution,
        "batch": batch,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "optimizer": optimizer,
        "steps_per_second": round(1 / statistics.median(intervals), 3) if intervals else None,
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "loss_finite": all(v is not None and v == v and abs(v) != float("inf") for v in losses),
        "attention": processors,
    }
    del result
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: check the script")
    parser.add_argument("--only", choices=["sd15", "sdxl", "flux1", "chroma"], help="one family")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        eight_bit = "AdamW"
        if torch.cuda.is_available():
            print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
            try:
                import bitsandbytes  # noqa: F401

                eight_bit = "AdamW8bit"
            except ImportError:
                print("bitsandbytes missing: AdamW8bit not checked", flush=True)
        plans = []
        if args.smoke:
            from worker.devtools.tiny_flux import save_tiny_chroma, save_tiny_flux
            from worker.devtools.tiny_models import save_tiny_sd15, save_tiny_sdxl

            save_tiny_sd15(root / "sd15")
            save_tiny_sdxl(root / "sdxl")
            save_tiny_flux(root / "flux1")
            save_tiny_chroma(root / "chroma")
            data = make_dataset(root, 64)
            for fam in ("sd15", "sdxl", "flux1", "chroma"):
                plans.append((f"{fam} smoke", fam, data, 64, 2, "no", False, "AdamW"))
        else:
            if args.only in (None, "sd15"):
                real_sd15(root)
                d512 = make_dataset(root, 512)
                plans += [
                    ("sd15 512 b1", "sd15", d512, 512, 1, "bf16", False, eight_bit),
                    ("sd15 512 b1 gc", "sd15", d512, 512, 1, "bf16", True, eight_bit),
                    ("sd15 512 b4", "sd15", d512, 512, 4, "bf16", False, eight_bit),
                    ("sd15 512 b4 gc", "sd15", d512, 512, 4, "bf16", True, eight_bit),
                    ("sd15 512 b1 fp16", "sd15", d512, 512, 1, "fp16", False, "AdamW"),
                ]
            if args.only in (None, "sdxl"):
                real_sdxl(root)
                d1024 = make_dataset(root, 1024)
                plans += [
                    ("sdxl 1024 b1 gc", "sdxl", d1024, 1024, 1, "bf16", True, eight_bit),
                    ("sdxl 1024 b1", "sdxl", d1024, 1024, 1, "bf16", False, eight_bit),
                ]
            if args.only in (None, "flux1"):
                real_flux1(root)
                d512 = root / "data512" if (root / "data512").exists() else make_dataset(root, 512)
                d1024 = root / "data1024" if (root / "data1024").exists() else make_dataset(root, 1024)
                plans += [  # FLUX.1 dev, rank 16, gradient checkpointing (sd-scripts' FLUX advice)
                    ("flux1 512 b1 gc", "flux1", d512, 512, 1, "bf16", True, eight_bit),
                    ("flux1 1024 b1 gc", "flux1", d1024, 1024, 1, "bf16", True, eight_bit),
                ]
            if args.only in (None, "chroma"):
                real_chroma(root)
                d512 = root / "data512" if (root / "data512").exists() else make_dataset(root, 512)
                d1024 = root / "data1024" if (root / "data1024").exists() else make_dataset(root, 1024)
                plans += [  # Chroma1-HD, rank 16, gradient checkpointing (ai-toolkit's Chroma example)
                    ("chroma 512 b1 gc", "chroma", d512, 512, 1, "bf16", True, eight_bit),
                    ("chroma 1024 b1 gc", "chroma", d1024, 1024, 1, "bf16", True, eight_bit),
                ]
        for name, base, data, res, batch, precision, gc, opt in plans:
            try:
                row = run(
                    name,
                    base,
                    root,
                    data,
                    resolution=res,
                    batch=batch,
                    precision=precision,
                    checkpointing=gc,
                    optimizer=opt,
                    steps=3 if args.smoke else args.steps,
                )
            except Exception as exc:  # one failing run (e.g. out of memory) must not hide the others
                row = {"run": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| run | it/s | peak VRAM GiB | loss finite | attention |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {r.get('steps_per_second')} | {r.get('peak_vram_gib')} | "
            f"{r.get('loss_finite')} | {', '.join(r.get('attention', [])) or r.get('error')} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
