"""What each family's full-size models weigh and how much their training keeps for backward: the numbers the
VRAM estimate (shared/vram/estimate.py) is made of. Pure data: no torch.

Parameter counts and LoRA target widths are exact: counted once from the configs lorabake ships
(worker/training/base_configs: SD1.5, SD2 512, SDXL base, FLUX.1 dev) built on the meta device, with the
modules worker/training/network.py and flux_names.py put LoRA on; tests/worker/test_vram_tables.py builds
them again and asserts every number (`python -m worker.devtools.vram_counts` prints them).

Activation figures are rough first figures, to be calibrated against measured peaks by bench/gpu_train.py
on a GPU: the bytes autograd keeps for backward in one LoRA training forward (bf16, rank 16 on the default
targets, flash-style attention that keeps q, k, v, the output and its log-sum-exp, peft's per-layer input
copy), counted on the meta device at two resolutions and fitted as bytes per latent pixel plus bytes per
sample (FLUX's 512 T5 tokens do not grow with the image). With gradient checkpointing: the checkpointed
blocks' inputs, what stays outside them, and the largest block recomputed during backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.model_families import ModelFamily


@dataclass(frozen=True)
class Targets:
    """Modules that get a LoRA: how many, and the sum over them of in (x kernel area) + out features, so a
    rank-r LoRA on them has r x width parameters."""

    modules: int
    width: int


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for backward per latent pixel and per sample (16-bit compute), without and
    with gradient checkpointing."""

    per_pixel: int
    per_sample: int
    checkpointed_per_pixel: int
    checkpointed_per_sample: int


@dataclass(frozen=True)
class TextEncoder:
    name: str
    params: int
    lora: dict[str, Targets] | None  # network_target -> targets; None: never gets a LoRA (FLUX's T5)
    output_width: int  # hidden size of the output the engine caches per caption


@dataclass(frozen=True)
class FamilyMemory:
    denoiser: int  # parameters of the UNet / transformer
    vae: int
    text_encoders: tuple[TextEncoder, ...]
    denoiser_lora: dict[str, Targets]  # network_target -> targets (FLUX: every Linear of every block)
    locon_linear: Targets  # network-rank modules LoCon (conv_dim) adds: Linear / 1x1 children of resnets
    locon_conv: Targets  # 3x3 convs of resnets and up/downsamplers, at conv_dim
    activations: Activations
    latent_channels: int
    caption_tokens: int  # tokens of one cached caption (CLIP 77; FLUX's T5: up to 512)
    pooled_width: int = 0  # pooled text embedding cached beside it (SDXL, FLUX)
    # FLUX: blocks (kind -> count, parameters of one, LoRA targets of one), for block selection and swapping
    blocks: dict[str, tuple[int, int, Targets]] | None = None


NO_TARGETS = Targets(0, 0)
CLIP_L_LORA = {"all_linear": Targets(72, 165_888), "attention": Targets(48, 73_728)}
CLIP_L = TextEncoder("CLIP-L", 123_060_480, CLIP_L_LORA, 768)

FAMILY_MEMORY: dict[ModelFamily, FamilyMemory] = {
    "sd1": FamilyMemory(
        denoiser=859_520_964,
        vae=83_653_863,
        text_encoders=(CLIP_L,),
        denoiser_lora={"all_linear": Targets(192, 423_936), "attention": Targets(128, 199_296)},
        locon_linear=Targets(36, 82_880),
        locon_conv=Targets(50, 544_000),
        activations=Activations(258_524, 7_714_816, 68_965, 463_168),
        latent_channels=4,
        caption_tokens=77,
    ),
    "sd2": FamilyMemory(
        denoiser=865_910_724,
        vae=83_653_863,
        text_encoders=(
            TextEncoder(
                "OpenCLIP-H",
                340_387_840,
                {"all_linear": Targets(138, 423_936), "attention": Targets(92, 188_416)},
                1024,
            ),
        ),
        denoiser_lora={"all_linear": Targets(192, 432_128), "attention": Targets(128, 207_488)},
        locon_linear=Targets(36, 82_880),
        locon_conv=Targets(50, 544_000),
        activations=Activations(247_815, 8_976_384, 58_301, 581_440),
        latent_channels=4,
        caption_tokens=77,
    ),
    "sdxl": FamilyMemory(
        denoiser=2_567_463_684,
        vae=83_653_863,
        text_encoders=(
            CLIP_L,
            TextEncoder(
                "OpenCLIP-bigG",
                694_659_840,
                {"all_linear": Targets(192, 737_280), "attention": Targets(128, 327_680)},
                1280,
            ),
        ),
        denoiser_lora={"all_linear": Targets(722, 2_659_840), "attention": Targets(560, 1_451_520)},
        locon_linear=Targets(28, 58_560),
        locon_conv=Targets(38, 355_840),
        activations=Activations(461_694, 70_130_432, 45_314, 1_152_448),
        latent_channels=4,
        caption_tokens=77,
        pooled_width=1280,
    ),
    "flux1": FamilyMemory(  # FLUX.1 dev; schnell lacks the guidance embedder (about 10 M fewer)
        denoiser=11_901_408_320,
        vae=83_819_683,
        text_encoders=(CLIP_L, TextEncoder("T5-XXL", 4_762_310_656, None, 4096)),
        denoiser_lora={"all_linear": Targets(494, 5_369_856)},
        locon_linear=NO_TARGETS,
        locon_conv=NO_TARGETS,
        activations=Activations(2_195_744, 4_500_144_512, 131_198, 268_812_352),
        latent_channels=16,
        caption_tokens=512,  # dev's t5xxl_max_token_length default (schnell: 256)
        pooled_width=768,
        blocks={
            "double": (19, 339_831_296, Targets(14, 153_600)),
            "single": (38, 141_591_808, Targets(6, 64_512)),
        },
    ),
}
# Chroma1-HD (worker/training/base_configs/chroma1-hd): exact counts like the others; its activations are
# FLUX.1's until bench/gpu_train.py's Chroma runs calibrate them (the same blocks and widths less the small
# modulation Linears).
CHROMA_MEMORY = FamilyMemory(
    denoiser=8_899_983_424,
    vae=83_819_683,
    text_encoders=(TextEncoder("T5-XXL", 4_762_310_656, None, 4096),),
    denoiser_lora={"all_linear": Targets(418, 4_085_760)},
    locon_linear=NO_TARGETS,
    locon_conv=NO_TARGETS,
    activations=FAMILY_MEMORY["flux1"].activations,
    latent_channels=16,
    caption_tokens=512,  # Chroma's t5xxl_max_token_length default (families/chroma.py T5_TOKENS)
    blocks={
        "double": (19, 226_548_224, Targets(12, 110_592)),
        "single": (38, 113_271_040, Targets(5, 52_224)),
    },
)
FAMILY_MEMORY["chroma"] = CHROMA_MEMORY
# Images assumed in the largest bucket when the plan has no image sizes (the VAE encodes vae_batch_size of
# them at once, shared.config.spec.vae_batch_for: up to 4)
VAE_ENCODE_CHUNK = 4
# Linear weights (parameters, output rows) of each denoiser and of T5-XXL: what base_quantization stores
# quantized (worker/training/base_quantization.py; convolutions, norms and biases stay in the training
# dtype, so SD1.5's UNet, 31 % Linear, gains little). Counted on the meta device like the rest.
QUANTIZED_LINEARS: dict[str, tuple[int, int]] = {
    "sd1": (270_049_280, 234_880),
    "sd2": (301_219_840, 259_840),
    "sdxl": (2_232_647_680, 1_455_040),
    "flux1": (11_898_322_944, 3_065_920),
    "chroma": (8_897_888_256, 2_050_112),
}
T5_LINEARS = (4_630_511_616, 983_040)
# peak live bytes of a float32 VAE encode per image pixel (the four families' VAEs alike: five 128-channel
# full-resolution tensors at once in the first resnets; counted on the meta device)
VAE_ENCODE_BYTES_PER_PIXEL = 2560
