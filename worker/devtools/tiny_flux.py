"""A tiny FLUX.1-shaped pipeline (dev, or schnell without the guidance embedding) with random weights, built
fully offline, for tests and for trying the flow without a GPU (as tiny_models.py does for SD).

The module layout matches FLUX.1 (double and single transformer blocks, T5 + CLIP-L text encoders, a
16-channel VAE with its shift/scale, a flow-matching scheduler), only the sizes are tiny. The VAE has 2
blocks, so its latent factor is 2 (FLUX.1's is 8): a 64x64 image gives 32x32x16 latents, packed in 2x2
patches into 256 tokens of 64 channels, the transformer's in_channels.

No T5 SentencePiece vocabulary ships with any registry package, so a small Unigram vocabulary is trained at
build time with the ``tokenizers`` package (well under a second) and canonicalised to be the same each time.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from worker.devtools.tiny_models import (
    TEXT_HIDDEN,
    _seeded,
    build_tiny_clip_tokenizer,
    build_tiny_text_encoder,
)

IMAGE_SIZE = 64  # pixels; divisible by vae factor 2 * packing 2
LATENT_CHANNELS = 16  # FLUX.1's VAE
T5_HIDDEN = 48  # T5-XXL's 4096; not CLIP's width, so swapped encoders fail loudly
T5_MAX_LENGTH = 512  # FLUX.1 dev's max_sequence_length (schnell uses 256)
VAE_SHIFT_FACTOR = 0.1159  # FLUX.1's ae.safetensors / vae/config.json
VAE_SCALING_FACTOR = 0.3611
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
T5_VOCAB_TARGET = 400  # the trainer stops at ~280 pieces on the text below
# Score below every trained piece for the ASCII characters the text lacks (so a prompt rarely hits <unk>).
_UNSEEN_CHAR_SCORE_GAP = 1.0
_SCORE_DECIMALS = 4  # the trainer's float sums differ in the last bits from run to run

# FLUX.1-dev's scheduler_config.json; FLUX.1-schnell ships shift 1.0 without dynamic shifting.
DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SCHNELL_SCHEDULER = {**DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
CHROMA_SCHEDULER = DEV_SCHEDULER  # lodestones/Chroma1-HD's scheduler_config.json: dev's dynamic shifting

_T5_TRAINING_TEXT = """
A photo of a red toy car on a wooden table, soft morning light from the window.
A painting of a woman with long dark hair, wearing a blue dress, standing in a field of yellow flowers.
A close-up portrait of an old man with a grey beard and glasses, smiling at the camera.
An illustration of a small dragon sleeping on a pile of gold coins inside a cave.
A black and white photograph of a busy city street at night, cars and people, wet pavement.
A watercolor drawing of a lighthouse by the sea, waves crashing against the rocks.
A cat sitting on a windowsill, looking outside at the falling snow.
A bowl of fresh fruit: apples, oranges, bananas and grapes, still life, studio lighting.
A young girl riding a bicycle along a quiet country road in summer.
A mountain landscape with a clear lake, pine trees, and clouds over the peaks.
A knight in shining armor holding a sword, fantasy art, highly detailed.
A cozy kitchen with copper pots, a brick oven, and herbs hanging from the ceiling.
Two dogs playing with a ball on the beach at sunset, golden hour.
A futuristic robot walking through a neon-lit market in the rain.
A plate of pasta with tomato sauce and basil, top view, food photography.
A vintage poster of a train crossing a bridge over a river valley.
An astronaut floating in space above the earth, stars in the background.
A child's drawing of a house, a sun, and a family holding hands.
A white horse running across a green meadow, mane flying in the wind.
A wooden boat tied to a dock on a misty morning, calm water, reflections.
A library full of old books, warm lamps, and a leather armchair by the fireplace.
A macro shot of a bee collecting pollen from a purple flower.
A snowy village at Christmas, lights in every window, people walking in coats and scarves.
A desert with tall sand dunes under a bright sky, a caravan of camels in the distance.
A character sheet of a cartoon fox, front view, side view and back view, simple background.
"""


def _metaspace() -> pre_tokenizers.PreTokenizer:
    # What transformers' T5Tokenizer sets up, so training splits words as tokenizing will.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )


def tiny_t5_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) of a small Unigram model trained on a built-in English text: the T5
    specials first, then the trained pieces, then the printable ASCII characters the text lacks.

    Identical on every call: scores are rounded and pieces sorted by (score, piece), since the trainer's
    parallel sums and tie order vary between runs.
    """
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = _metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_VOCAB_TARGET,
        special_tokens=list(T5_SPECIALS),
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(_T5_TRAINING_TEXT.strip().splitlines(), trainer)
    trained = json.loads(tokenizer.to_str())["model"]["vocab"]
    pieces = sorted(
        ((piece, round(score, _SCORE_DECIMALS)) for piece, score in trained if piece not in T5_SPECIALS),
        key=lambda item: (-item[1], item[0]),
    )
    known = {piece for piece, _ in pieces}
    floor = round(pieces[-1][1] - _UNSEEN_CHAR_SCORE_GAP, _SCORE_DECIMALS)
    unseen = [(c, floor) for c in sorted(string.ascii_letters + string.digits + string.punctuation)]
    return [(s, 0.0) for s in T5_SPECIALS] + pieces + [u for u in unseen if u[0] not in known]


def build_tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer (pad 0, eos 1 appended to every text, unk 2, no sentinel ids) on tiny_t5_vocab()."""
    return T5TokenizerFast(vocab=tiny_t5_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_tiny_t5_encoder(vocab_size: int, seed: int = 0) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_HIDDEN,
        d_kv=12,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX.1's t5xxl
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        return T5EncoderModel(config).eval()


def build_tiny_flux_transformer(*, guidance_embeds: bool = True, seed: int = 0) -> FluxTransformer2DModel:
    with _seeded(seed):
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=LATENT_CHANNELS * 4,  # 2x2 packed latents
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_HIDDEN,
            pooled_projection_dim=TEXT_HIDDEN,  # CLIP's pooled output
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim
        ).eval()


def build_tiny_flux_vae(seed: int = 0) -> AutoencoderKL:
    with _seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=LATENT_CHANNELS,
            norm_num_groups=32,
            sample_size=IMAGE_SIZE,
            scaling_factor=VAE_SCALING_FACTOR,
            shift_factor=VAE_SHIFT_FACTOR,
            use_quant_conv=False,  # FLUX.1's VAE has neither quant conv
            use_post_quant_conv=False,
            force_upcast=True,
        ).eval()


def build_tiny_flux_pipeline(*, guidance_embeds: bool = True, seed: int = 0) -> FluxPipeline:
    """A random-weight FLUX.1-dev-shaped pipeline (schnell-shaped with guidance_embeds=False, which also
    takes schnell's scheduler config), identical for the same seed. Runs on CPU."""
    tokenizer_2 = build_tiny_t5_tokenizer()
    scheduler_config = DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config),
        vae=build_tiny_flux_vae(seed),
        text_encoder=build_tiny_text_encoder(seed),
        tokenizer=build_tiny_clip_tokenizer(),
        text_encoder_2=build_tiny_t5_encoder(len(tokenizer_2), seed),
        tokenizer_2=tokenizer_2,
        transformer=build_tiny_flux_transformer(guidance_embeds=guidance_embeds, seed=seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux(path: Path, *, guidance_embeds: bool = True, seed: int = 0) -> Path:
    """Save a tiny FLUX.1 pipeline as a diffusers folder (safetensors weights) and return the folder; it
    loads offline with ``FluxPipeline.from_pretrained(path, local_files_only=True)``."""
    path = Path(path)
    pipe = build_tiny_flux_pipeline(guidance_embeds=guidance_embeds, seed=seed)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# --- Chroma: FLUX.1's blocks and VAE with T5 alone, its modulations from the approximator ------------------


def build_tiny_chroma_transformer(seed: int = 0) -> ChromaTransformer2DModel:
    with _seeded(seed):
        return ChromaTransformer2DModel(
            patch_size=1,
            in_channels=LATENT_CHANNELS * 4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_HIDDEN,
            axes_dims_rope=(4, 6, 6),
            approximator_num_channels=16,  # Chroma's 64: timestep, guidance and modulation-index embeddings
            approximator_hidden_dim=32,
            approximator_layers=2,
        ).eval()


def build_tiny_chroma_pipeline(seed: int = 0) -> ChromaPipeline:
    """A random-weight Chroma-shaped pipeline (the tiny FLUX.1 VAE and T5, no CLIP), identical for the same
    seed. Runs on CPU."""
    tokenizer = build_tiny_t5_tokenizer()
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**CHROMA_SCHEDULER),
        vae=build_tiny_flux_vae(seed),
        text_encoder=build_tiny_t5_encoder(len(tokenizer), seed),
        tokenizer=tokenizer,
        transformer=build_tiny_chroma_transformer(seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_chroma(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny Chroma pipeline as a diffusers folder; it loads offline with ``ChromaPipeline``."""
    path = Path(path)
    build_tiny_chroma_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path
