"""Tiny offline SD1.5 pipelines and the diffusers -> A1111 single-file writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worker.devtools.single_file import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    save_sd15_single_file,
    unet_to_ldm,
)
from worker.devtools.tiny_models import (
    IMAGE_SIZE,
    build_tiny_clip_tokenizer,
    build_tiny_sd15_pipeline,
    save_tiny_sd15,
)


def _run(pipe, seed: int = 0) -> np.ndarray:
    return pipe(
        "a photo",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert different == []


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd15_pipeline(seed=0)


def test_tokenizer_matches_text_encoder(pipe, tmp_path: Path):
    tok = pipe.tokenizer
    cfg = pipe.text_encoder.config
    ids = tok("a photo of lisabp woman").input_ids
    assert ids[0] == tok.bos_token_id == cfg.bos_token_id
    assert ids[-1] == tok.eos_token_id == cfg.eos_token_id
    assert tok.pad_token_id == tok.eos_token_id == cfg.pad_token_id  # pad = eos, as in SD1.5
    assert len(tok) == cfg.vocab_size and max(ids) < cfg.vocab_size
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of lisabp woman"
    padded = tok("a photo", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert len(padded) == 77 == cfg.max_position_embeddings
    # The same vocab written to a real folder loads the same tokenizer.
    on_disk = build_tiny_clip_tokenizer(tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.json").is_file() and (tmp_path / "tok" / "merges.txt").is_file()
    assert on_disk("a photo of lisabp woman").input_ids == ids


def test_build_is_deterministic_per_seed(pipe):
    again = build_tiny_sd15_pipeline(seed=0)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(again, name))
    other = build_tiny_sd15_pipeline(seed=1)
    assert not torch.equal(pipe.unet.conv_in.weight, other.unet.conv_in.weight)


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_sd15_pipeline(seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_shapes_and_scheduler(pipe):
    assert pipe.vae_scale_factor == 2
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == IMAGE_SIZE
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    sched = pipe.scheduler.config
    assert (sched.beta_schedule, sched.steps_offset, sched.num_train_timesteps) == ("scaled_linear", 1, 1000)
    n_params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert n_params < 3_000_000


def test_pipeline_runs_and_is_deterministic(pipe):
    first, second = _run(pipe), _run(pipe)
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _run(pipe, seed=1))


def test_save_tiny_sd15_reloads_identically(pipe, tmp_path: Path):
    from diffusers import StableDiffusionPipeline

    folder = save_tiny_sd15(tmp_path / "tiny", seed=0)
    assert (folder / "model_index.json").is_file()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    loaded = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(loaded, name))
    np.testing.assert_array_equal(_run(loaded), _run(pipe))


def test_single_file_round_trip(pipe, tmp_path: Path):
    from diffusers import StableDiffusionPipeline

    config = save_tiny_sd15(tmp_path / "tiny", seed=0)
    path = save_sd15_single_file(pipe, tmp_path / "tiny.safetensors")

    sd = load_file(path)
    n_expected = sum(len(getattr(pipe, n).state_dict()) for n in ("unet", "vae", "text_encoder"))
    assert len(sd) == n_expected
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in sd)
    # Original-format VAE mid attention is 1x1 convs.
    assert sd[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert sd[VAE_PREFIX + "decoder.mid.attn_1.proj_out.weight"].ndim == 4
    assert CLIP_PREFIX + "embeddings.token_embedding.weight" in sd

    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(loaded, name))
    np.testing.assert_array_equal(_run(loaded), _run(pipe))


def test_single_file_fp16_and_bad_suffix(pipe, tmp_path: Path):
    path = save_sd15_single_file(pipe, tmp_path / "half.safetensors", dtype=torch.float16)
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
    with pytest.raises(ValueError, match="safetensors"):
        save_sd15_single_file(pipe, tmp_path / "model.ckpt")


def test_unet_map_is_generic_for_full_size_sd15():
    """The map comes from the config: check it on a full SD1.5 UNet (meta tensors, no memory) against the
    original LDM names and against diffusers' own reader."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    ldm = unet_to_ldm(unet)
    assert len(ldm) == len(unet.state_dict())
    for key in (  # names every SD1.5 checkpoint has
        "input_blocks.3.0.op.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.emb_layers.1.bias",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.2.conv.weight",
        "output_blocks.11.0.skip_connection.weight",
        "output_blocks.11.1.proj_out.weight",
        "time_embed.2.weight",
        "out.2.bias",
    ):
        assert key in ldm, key
    back = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in ldm.items()}, unet.config)
    assert set(back) == set(unet.state_dict())
