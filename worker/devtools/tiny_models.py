"""Tiny Stable-Diffusion-1.5-shaped pipelines with random weights, built fully offline (and SD2.x-768-v- and
SDXL-base-shaped ones: build_tiny_sd2v_pipeline, build_tiny_sdxl_pipeline).

For tests and for a "try it without a GPU" demo. The module layout (block types, key names, config fields)
matches SD1.5, only the sizes are tiny, so LoRA key names, single-file conversion and the training loop
behave as on the real model.

Sizes: the VAE has 2 blocks, so its latent factor is 2 (not 8 as in SD1.5); 64x64 images give 32x32 latents
and the UNet's ``sample_size`` is 32 (the pipeline's default height/width = sample_size * vae_scale_factor).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
IMAGE_SIZE = 64  # pixels; the pipeline's default height and width
LATENT_SIZE = 32  # IMAGE_SIZE / VAE factor 2
TEXT_HIDDEN = 32  # also the UNet's cross_attention_dim
SD2_TEXT_HIDDEN = 48  # SD2: OpenCLIP ViT-H (1024 wide, not SD1's 768); the UNet's cross_attention_dim
SDXL_TEXT_HIDDEN_2 = 40  # SDXL's second encoder (OpenCLIP bigG, 1280) differs in width from the first (768)
SDXL_TIME_EMBED_DIM = 8  # SDXL: addition_time_embed_dim 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the table byte-level BPE pre-tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def tiny_clip_vocab() -> dict[str, int]:
    """Byte-level vocab: 256 byte chars, the same with ``</w>``, then bos, eos (last, as CLIP's 49406/7)."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def write_tiny_clip_tokenizer_files(target_dir: Path) -> Path:
    """Write vocab.json + merges.txt (no merges: every word is split into byte characters) into target_dir."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "vocab.json").write_text(
        json.dumps(tiny_clip_vocab(), ensure_ascii=False), encoding="utf-8"
    )
    (target_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return target_dir


def build_tiny_clip_tokenizer(target_dir: Path | None = None, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """A CLIPTokenizer from the hand-written byte-level vocab; files go to target_dir or a temp dir.

    pad_token: eos as in SD1.5 (and SDXL's first tokenizer); SD2 and SDXL's second tokenizer pad with "!".
    """
    kwargs = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": pad_token,
        "unk_token": EOS_TOKEN,
        "model_max_length": 77,
    }
    if target_dir is not None:
        return CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer_files(target_dir)), **kwargs)
    # The tokenizers backend reads the files into memory, so the temp dir can go right after loading.
    with tempfile.TemporaryDirectory(prefix="tiny-clip-tok-") as tmp:
        return CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer_files(Path(tmp))), **kwargs)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Seed for determinism, but restore the caller's global RNG state afterwards (tests seed it themselves).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    vocab = tiny_clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        # eos id != 2 makes CLIPTextModel pool at the eos token (not the legacy argmax); pad = eos (SD1.5).
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN,
    )
    with _seeded(seed):
        return CLIPTextModel(config).eval()


def build_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            # Attention at the first level, so LoRA keys look like SD1.5's down_blocks_0_attentions_0...
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_HIDDEN,
            attention_head_dim=2,  # as in SD1.5's config this is the number of heads (head dim 16 here)
            norm_num_groups=32,
        ).eval()


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    with _seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=IMAGE_SIZE,
        ).eval()


def build_tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )


def build_tiny_sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD1.5-shaped pipeline (~1.5 M parameters), identical for the same seed. Runs on CPU."""
    pipe = StableDiffusionPipeline(
        vae=build_tiny_vae(seed),
        text_encoder=build_tiny_text_encoder(seed),
        tokenizer=build_tiny_clip_tokenizer(),
        unet=build_tiny_unet(seed),
        scheduler=build_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd15(target_dir: Path, seed: int = 0) -> Path:
    """Save a tiny pipeline as a diffusers folder (safetensors weights) and return the folder."""
    target_dir = Path(target_dir)
    build_tiny_sd15_pipeline(seed).save_pretrained(target_dir, safe_serialization=True)
    return target_dir


# --- SD2.x (768-v) and SDXL shapes -------------------------------------------------------------------------


def _tiny_text_config(hidden: int, hidden_act: str, pad_token: str = EOS_TOKEN) -> CLIPTextConfig:
    vocab = tiny_clip_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden + 5,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],  # != 2: pooling at the first eos token, as for the real models
        pad_token_id=vocab[pad_token],
        hidden_act=hidden_act,
        projection_dim=hidden,
    )


def build_tiny_sd2v_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD2.x-768-v-shaped pipeline: linear proj_in/proj_out, per-level head counts, a gelu
    (OpenCLIP-like) text encoder of its own width, "!" padding, and a v_prediction scheduler."""
    with _seeded(seed):
        text_encoder = CLIPTextModel(_tiny_text_config(SD2_TEXT_HIDDEN, "gelu", pad_token="!")).eval()
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=SD2_TEXT_HIDDEN,
            attention_head_dim=(2, 4),  # SD2 lists one value per level ([5, 10, 20, 20]: head counts)
            use_linear_projection=True,  # SD2's proj_in/proj_out are Linear (SD1: 1x1 conv)
            upcast_attention=True,  # as SD2.1-768-v
            norm_num_groups=32,
        ).eval()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(
        vae=build_tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=build_tiny_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight SDXL-base-shaped pipeline: CLIPTextModel (hidden 32) + CLIPTextModelWithProjection
    (hidden 40: different widths, as CLIP-L and bigG), cross_attention_dim 32 + 40, "text_time" added
    conditioning (pooled embeds + 6 size/crop ids), attention only at the lower level with 2 transformer
    blocks there (SDXL: none at the top, 2 and 10 below), an Euler scheduler as SDXL ships."""
    pooled = SDXL_TEXT_HIDDEN_2
    with _seeded(seed):
        text_encoder = CLIPTextModel(_tiny_text_config(TEXT_HIDDEN, "quick_gelu")).eval()
    with _seeded(seed + 1):
        text_encoder_2 = CLIPTextModelWithProjection(
            _tiny_text_config(SDXL_TEXT_HIDDEN_2, "gelu", pad_token="!")
        ).eval()
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + pooled,
            norm_num_groups=32,
        ).eval()
    vae = build_tiny_vae(seed)
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE values
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_tiny_clip_tokenizer(),
        tokenizer_2=build_tiny_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd2v(target_dir: Path, seed: int = 0) -> Path:
    """Save a tiny SD2-768-v-shaped pipeline as a diffusers folder and return the folder."""
    target_dir = Path(target_dir)
    build_tiny_sd2v_pipeline(seed).save_pretrained(target_dir, safe_serialization=True)
    return target_dir


def save_tiny_sdxl(target_dir: Path, seed: int = 0) -> Path:
    """Save a tiny SDXL-shaped pipeline as a diffusers folder and return the folder."""
    target_dir = Path(target_dir)
    build_tiny_sdxl_pipeline(seed).save_pretrained(target_dir, safe_serialization=True)
    return target_dir
