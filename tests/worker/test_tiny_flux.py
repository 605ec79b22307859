"""The tiny FLUX.1 pipelines (dev and schnell): built from a seed, saved as a diffusers folder that loads
offline, and run on CPU; their T5 tokenizer is trained at build time and must come out the same each time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from shared.catalogue.flux import flux_variant_from_config
from shared.catalogue.scan import ModelScanner
from worker.devtools.tiny_flux import (
    T5_HIDDEN,
    VAE_SCALING_FACTOR,
    VAE_SHIFT_FACTOR,
    build_tiny_flux_pipeline,
    build_tiny_t5_tokenizer,
    save_tiny_flux,
    tiny_t5_vocab,
)
from worker.devtools.tiny_models import TEXT_HIDDEN

BUILD_SECONDS = 10.0  # about 0.2 s alone; generous for a busy 2-core machine


def _run(pipe: FluxPipeline) -> np.ndarray:
    return pipe(
        "a red toy",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_builds_saves_reloads_offline_and_runs(tmp_path: Path, guidance_embeds: bool):
    started = time.perf_counter()
    pipe = build_tiny_flux_pipeline(guidance_embeds=guidance_embeds)
    assert time.perf_counter() - started < BUILD_SECONDS
    transformer = pipe.transformer.config
    assert (transformer.in_channels, transformer.guidance_embeds) == (64, guidance_embeds)
    assert (transformer.joint_attention_dim, transformer.pooled_projection_dim) == (T5_HIDDEN, TEXT_HIDDEN)
    vae = pipe.vae.config
    assert (vae.shift_factor, vae.scaling_factor) == (VAE_SHIFT_FACTOR, VAE_SCALING_FACTOR)
    assert vae.latent_channels == 16 and not vae.use_quant_conv and not vae.use_post_quant_conv
    assert pipe.scheduler.config.use_dynamic_shifting is guidance_embeds  # schnell ships a fixed shift 1.0

    folder = save_tiny_flux(tmp_path / "tiny-flux", guidance_embeds=guidance_embeds)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    saved = json.loads((folder / "transformer" / "config.json").read_text())
    assert flux_variant_from_config(saved) == ("dev" if guidance_embeds else "schnell")
    listed = ModelScanner(tmp_path, hub_cache=tmp_path / "no-hub-cache").scan()
    assert [(e.name, e.family, e.prediction_type) for e in listed] == [("tiny-flux", "flux1", None)]

    reloaded = FluxPipeline.from_pretrained(folder, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    image = _run(reloaded)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    # Same weights; attention kernels picked at load time may differ in the last bits.
    np.testing.assert_allclose(image, _run(pipe), atol=1e-5)


def test_the_same_seed_gives_the_same_weights():
    a, b = build_tiny_flux_pipeline(seed=3), build_tiny_flux_pipeline(seed=3)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert [k for k in sa if not torch.equal(sa[k], sb[k])] == [], name
    other = build_tiny_flux_pipeline(seed=4).transformer.state_dict()
    assert not torch.equal(other["x_embedder.weight"], a.transformer.state_dict()["x_embedder.weight"])


def test_the_t5_tokenizer_is_deterministic_and_appends_eos(tmp_path: Path):
    # The trainer's raw output varies from call to call (tie order, float sums): the vocab must not.
    vocabs = [tiny_t5_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    vocab = vocabs[0]
    assert [piece for piece, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]
    assert 200 <= len(vocab) <= 500

    tok = build_tiny_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a red toy").input_ids
    assert ids[-1] == 1 and 2 not in ids and ids == build_tiny_t5_tokenizer()("a red toy").input_ids
    assert 2 not in tok("Zebra #7 QUIZ").input_ids  # every printable ASCII character has a piece
    assert tok.decode(ids, skip_special_tokens=True) == "a red toy"
    padded = tok("a red toy", padding="max_length", max_length=32, truncation=True).input_ids
    assert len(padded) == 32 and padded[len(ids) :] == [0] * (32 - len(ids))

    tok.save_pretrained(tmp_path / "tok")
    again = type(tok).from_pretrained(tmp_path / "tok", local_files_only=True)
    assert again("a red toy").input_ids == ids and len(again) == len(tok)
