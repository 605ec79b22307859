"""Kohya-format export: key names, alpha, metadata, hashes, atomic writes, and save precisions that reload
in diffusers as the in-memory LoRA."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worker.devtools.tiny_models import build_tiny_sd15_pipeline
from worker.training import export
from worker.training.network import UNET_TARGET_MODULES, add_lora, lora_layers

RANK, ALPHA = 4, 2.0
KEY = re.compile(r"^lora_(unet|te)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def lora_pipeline(seed: int = 0, *, with_te: bool = True):
    """A tiny pipeline with LoRA adapters whose up weights are random (a fresh LoRA is a no-op)."""
    pipe = build_tiny_sd15_pipeline(seed=0)
    torch.manual_seed(seed)  # the LoRA down init
    add_lora(pipe.unet, pipe.text_encoder if with_te else None, rank=RANK, alpha=ALPHA)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for _, layer in lora_layers(model):
                up = layer.lora_B["default"].weight
                up.copy_(torch.randn(up.shape, generator=gen) * 0.2)
    return pipe


def save(pipe, path: Path, dtype=torch.float32, metadata=None, with_te: bool = True) -> Path:
    return export.save_kohya_lora(
        pipe.unet,
        pipe.text_encoder if with_te else None,
        path,
        network_alpha=ALPHA,
        save_dtype=dtype,
        metadata=metadata or {"ss_output_name": "x", "ss_network_dim": str(RANK), "ss_network_alpha": "2.0"},
    )


@pytest.fixture(scope="module")
def pipe():
    return lora_pipeline()


def test_key_names_alpha_and_metadata(pipe, tmp_path):
    path = save(pipe, tmp_path / "k.safetensors", metadata={"ss_network_alpha": "999", "ss_network_dim": "1"})
    tensors = load_file(path)
    assert all(KEY.match(k) for k in tensors), [k for k in tensors if not KEY.match(k)]
    te = [k for k in tensors if k.startswith("lora_te_")]
    assert te and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in tensors
    unet_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert f"{unet_key}.lora_up.weight" in tensors
    alphas = [t for k, t in tensors.items() if k.endswith(".alpha")]
    assert len(alphas) * 3 == len(tensors)
    assert all(a.ndim == 0 and a.item() == ALPHA for a in alphas)
    for k, t in tensors.items():
        if k.endswith("lora_down.weight"):
            assert t.shape[0] == RANK
        elif k.endswith("lora_up.weight"):
            assert t.shape[1] == RANK
    meta = export.read_metadata(path)
    # The caller's wrong values are corrected from the tensors themselves.
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")


def test_alpha_is_exact_whatever_the_save_precision(tmp_path):
    """0.3 is not representable in fp16/bf16; the stored alpha must still be the trained one."""
    pipe = build_tiny_sd15_pipeline(seed=0)
    add_lora(pipe.unet, None, rank=4, alpha=0.3)
    path = export.save_kohya_lora(
        pipe.unet, None, tmp_path / "a.safetensors", network_alpha=0.3, save_dtype=torch.bfloat16, metadata={}
    )
    alphas = [t for k, t in load_file(path).items() if k.endswith(".alpha")]
    assert alphas and all(a.item() == torch.tensor(0.3).item() for a in alphas)
    assert export.read_metadata(path)["ss_network_alpha"] == "0.3"


def test_every_key_names_a_module_kohya_would_build(pipe, tmp_path):
    """Kohya's loader matches `lora_unet_`/`lora_te_` + module path, '.' -> '_'; it skips unknown names."""
    tensors = load_file(save(pipe, tmp_path / "m.safetensors"))
    unet_names = {export.kohya_name("lora_unet_", n) for n, _ in pipe.unet.named_modules()}
    te_modules = pipe.text_encoder.named_modules()
    te_names = {export.kohya_name("lora_te_", "text_model." + n) for n, _ in te_modules}
    modules = {k.rsplit(".", 2)[0] if "weight" in k else k.rsplit(".", 1)[0] for k in tensors}
    assert modules <= unet_names | te_names
    targets = tuple("." + t for t in UNET_TARGET_MODULES)
    n_unet_targets = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith(targets))
    # 4 transformer blocks x attn1/attn2 x q/k/v/out
    assert sum(m.startswith("lora_unet_") for m in modules) == n_unet_targets == 4 * 2 * 4
    assert sum(m.startswith("lora_te_") for m in modules) == 2 * 4  # 2 layers x q/k/v/out


def test_unet_only_file_has_no_text_encoder_keys(tmp_path):
    pipe = lora_pipeline(with_te=False)
    tensors = load_file(save(pipe, tmp_path / "u.safetensors", with_te=False))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)


def test_kohya_hashes(pipe, tmp_path):
    path = save(pipe, tmp_path / "h.safetensors")
    meta = export.read_metadata(path)
    blob = path.read_bytes()
    header = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + header :]).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{8}", meta["sshs_legacy_hash"])


def test_atomic_write_leaves_nothing_on_failure(pipe, tmp_path, monkeypatch):
    target = tmp_path / "a.safetensors"
    with pytest.raises(TypeError):
        save(pipe, target, metadata={"ss_epoch": 3})  # type: ignore[dict-item]

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save(pipe, target)
    assert list(tmp_path.iterdir()) == []


def test_alpha_must_match_the_trained_adapters(pipe, tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        export.save_kohya_lora(
            pipe.unet,
            None,
            tmp_path / "x.safetensors",
            network_alpha=RANK,
            save_dtype=torch.float32,
            metadata={},
        )


def _images(p) -> np.ndarray:
    p.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(5)
    return p("a red toy", num_inference_steps=2, output_type="np", generator=gen).images


@pytest.mark.parametrize(("precision", "tolerance"), [("float", 1e-5), ("fp16", 5e-3), ("bf16", 5e-2)])
@torch.no_grad()
def test_save_precision_round_trip(pipe, tmp_path, precision, tolerance):
    dtype = export.SAVE_DTYPES[precision]
    path = save(pipe, tmp_path / f"{precision}.safetensors", dtype=dtype)
    tensors = load_file(path)
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")} == {dtype}
    assert {t.dtype for k, t in tensors.items() if k.endswith(".alpha")} == {torch.float32}
    loaded = build_tiny_sd15_pipeline(seed=0)
    loaded.load_lora_weights(str(path))
    want, got = _images(pipe), _images(loaded)
    base = _images(build_tiny_sd15_pipeline(seed=0))
    diff = float(np.abs(got - want).max())
    effect = np.abs(want - base).max()
    print(f"\n[roundtrip {precision}] max abs image diff {diff:.2e} (LoRA effect {effect:.3f})")
    assert diff < tolerance
    assert np.abs(want - base).max() > 0.05


def test_metadata_helpers(tmp_path):
    freq = export.tag_frequency([("1_a b", "Red, blue ,red"), ("1_a b", "red"), ("reg", ""), ("reg", "x,,")])
    assert freq == {"1_a b": {"red": 3, "blue": 1}, "reg": {"x": 1}}
    assert export.lora_file_name("n", 3, is_final=False) == "n-000003.safetensors"
    assert export.lora_file_name("n", 3, is_final=True) == "n.safetensors"
    assert json.loads(json.dumps(freq)) == freq
