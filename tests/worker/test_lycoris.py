"""LyCORIS networks (LoHa, LoKr, DoRA) on the tiny models: trained a few steps, saved, and the FILE reloaded
into a fresh base model gives the trained model's outputs.

Two loaders read the files back: a merge that follows A1111's / ComfyUI's math (network_hada / network_lokr /
network_lora and comfy/weight_adapter: ΔW from the factors, times alpha / dim where a factor has a rank, DoRA
as ComfyUI's per-input-channel weight_decompose), and, for LoHa / LoKr, LyCORIS' own state-dict loader
(lycoris.modules.get_module / make_module, the reference implementation). Tolerance: float32 files
(save_precision "float") and float32 models, so the only difference is the order of float32 operations
(merged W + ΔW against the trained hook's W·x + ΔW·x): 1e-5 absolute on outputs of magnitude ~1.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lycoris.modules import get_module, make_module
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_models import build_tiny_sd15_pipeline, build_tiny_sdxl_pipeline, save_tiny_sdxl
from worker.training import export, network, text
from worker.training.engine import EngineHooks, train_lora

ATOL = 1e-5
BASE: dict = dict(
    base_model="tiny-sd15",
    resolution=64,
    mixed_precision="no",
    batch_size=2,
    seed=11,
    epochs=1,
    enable_bucket=False,
    unet_lr=2e-2,
    text_encoder_lr=2e-2,
    save_precision="float",
)
TYPES = {
    "loha": dict(network_type="loha", network_dim=2, network_alpha=1.0, conv_dim=2, conv_alpha=0.5),
    "lokr": dict(network_type="lokr", network_dim=2, network_alpha=1.0, lokr_factor=4, conv_dim=2),
    "dora": dict(network_dim=2, network_alpha=2.0, dora_wd=True),
}
SUFFIXES = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lycoris-data")
    folder = root / "img" / "1_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.5, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230), "green": (30, 200, 60)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)[None, None, :]).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def models(models_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lycoris-models")
    shutil.copytree(models_dir / "tiny-sd15", root / "tiny-sd15")
    save_tiny_sdxl(root / "tiny-sdxl")
    return root


def _train(config: TrainingConfig, dataset: Path, out: Path, models: Path, **kw):
    return train_lora(config, dataset, out, models_dir=models, device="cpu", **kw)


# --- the loaders -------------------------------------------------------------------------------------------


def _merged_weight(t: dict[str, torch.Tensor], name: str, weight: torch.Tensor) -> torch.Tensor:
    """A1111 / ComfyUI: the module's new weight from its file tensors (multiplier 1)."""
    alpha = t[f"{name}.alpha"].item()
    if f"{name}.hada_w1_a" in t:
        w1 = t[f"{name}.hada_w1_a"] @ t[f"{name}.hada_w1_b"]
        w2 = t[f"{name}.hada_w2_a"] @ t[f"{name}.hada_w2_b"]
        diff, scale = (w1 * w2).reshape(weight.shape), alpha / t[f"{name}.hada_w1_b"].shape[0]
    elif f"{name}.lokr_w1" in t or f"{name}.lokr_w1_a" in t:
        dim = None
        w1 = t.get(f"{name}.lokr_w1")
        if w1 is None:
            w1, dim = t[f"{name}.lokr_w1_a"] @ t[f"{name}.lokr_w1_b"], t[f"{name}.lokr_w1_b"].shape[0]
        w2 = t.get(f"{name}.lokr_w2")
        if w2 is None:
            w2, dim = t[f"{name}.lokr_w2_a"] @ t[f"{name}.lokr_w2_b"], t[f"{name}.lokr_w2_b"].shape[0]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        diff, scale = torch.kron(w1, w2).reshape(weight.shape), (alpha / dim if dim else 1.0)
    else:
        down, up = t[f"{name}.lora_down.weight"], t[f"{name}.lora_up.weight"]
        diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        scale = alpha / down.shape[0]
    merged = weight + scale * diff
    dora = t.get(f"{name}.dora_scale")
    if dora is not None:  # ComfyUI's weight_decompose on the input axis (A1111's only axis)
        assert dora.shape[0] == 1 and dora.shape[1] == weight.shape[1], dora.shape
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
        merged = merged * (dora / norm)
    return merged


def _modules_by_name(pipe) -> dict[str, torch.nn.Module]:
    te2 = getattr(pipe, "text_encoder_2", None)
    found = {}
    for prefix, model, kohya_path in export.named_models(pipe.unet, pipe.text_encoder, text_encoder_2=te2):
        for path, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                found[export.kohya_name(prefix, kohya_path(path))] = module
    return found


def _names(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".")[0] for k in tensors}


def load_merged(path: Path, pipe):
    """Merge the file into pipe's weights the way A1111 / ComfyUI do; every module must be found."""
    tensors = load_file(path)
    modules = _modules_by_name(pipe)
    missing = _names(tensors) - modules.keys()
    assert not missing, sorted(missing)[:3]
    with torch.no_grad():
        for name in _names(tensors):
            weight = modules[name].weight
            weight.copy_(_merged_weight(tensors, name, weight.float()))
    return pipe


def load_with_lycoris(path: Path, pipe):
    """LyCORIS' own loader: one module per name from the state dict, hooked into the fresh model."""
    tensors = load_file(path)
    modules = _modules_by_name(pipe)
    keep = []
    for name in _names(tensors):
        algo, params = get_module(tensors, name)
        assert algo is not None, name
        module = make_module(algo, params, name, modules[name])
        module.apply_to()
        keep.append(module)
    pipe._lycoris_modules = keep  # keep them alive with the pipeline
    return pipe


def _outputs(pipe, ids_list: list[torch.Tensor], sample: torch.Tensor, sdxl: bool):
    with torch.no_grad():
        if not sdxl:
            cond = pipe.text_encoder(ids_list[0])[0]
            return cond, pipe.unet(sample, 500, cond).sample
        out1 = pipe.text_encoder(ids_list[0], output_hidden_states=True)
        out2 = pipe.text_encoder_2(ids_list[1], output_hidden_states=True)
        cond = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        added = {"text_embeds": out2.text_embeds, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
        return cond, pipe.unet(sample, 500, cond, added_cond_kwargs=added).sample


def assert_round_trip(trained, loaded, base, *, sdxl: bool = False) -> None:
    tokenizers = [trained.tokenizer] + ([trained.tokenizer_2] if sdxl else [])
    ids = [text.tokenize(t, ["sks toy, red"]) for t in tokenizers]
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    want_cond, want = _outputs(trained, ids, sample, sdxl)
    base_cond, base_out = _outputs(base, ids, sample, sdxl)
    got_cond, got = _outputs(loaded, ids, sample, sdxl)
    assert (want - base_out).abs().max() > 1e-3 and (want_cond - base_cond).abs().max() > 1e-4
    torch.testing.assert_close(got_cond, want_cond, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# --- round trips per type ----------------------------------------------------------------------------------


def _peft_names(pipe, **kw) -> set[str]:
    """The module names of a PEFT LoRA of the same config: LyCORIS must use the very same module set."""
    te2 = getattr(pipe, "text_encoder_2", None)
    network.add_lora(pipe.unet, pipe.text_encoder, rank=2, alpha=1.0, target="all_linear", **kw)
    if te2 is not None:
        network.add_text_encoder_lora(te2, rank=2, alpha=1.0, target="all_linear")
    return {name for name, _ in export.kohya_modules(pipe.unet, pipe.text_encoder, text_encoder_2=te2)}


@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_trained_file_reloads_as_the_trained_network(kind, models, dataset, tmp_path):
    config = TrainingConfig(**BASE, output_name=kind, **TYPES[kind])
    result = _train(config, dataset, tmp_path, models)
    path = result.files[-1].path
    tensors = load_file(path)

    # Keys: LyCORIS' suffixes on the Kohya names of lorabake's LoRA module set (SD1: diffusers paths).
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert suffixes <= SUFFIXES[kind] and {"alpha"} < suffixes
    names = _names(tensors)
    conv = config.conv_dim is not None
    assert names == _peft_names(build_tiny_sd15_pipeline(seed=0), conv_rank=2 if conv else None)
    assert all(
        re.fullmatch(r"lora_(unet_(down|mid|up)_blocks?_|te_text_model_encoder_layers_)\w+", n) for n in names
    )
    assert all(
        t.dtype == torch.float32 and (t.dim() == 0) == k.endswith(".alpha") for k, t in tensors.items()
    )
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv_name = "lora_unet_down_blocks_0_resnets_0_conv1"
    if kind == "loha":
        assert tensors[f"{q}.hada_w1_a"].shape == (32, 2) and tensors[f"{q}.alpha"].item() == 1.0
        assert tensors[f"{conv_name}.hada_w1_b"].shape == (2, 32 * 9) and tensors[f"{conv_name}.alpha"] == 0.5
    elif kind == "lokr":  # factor 4: 32 = 4 x 8, w1 full (4 x 4), w2 of rank 2 (8 x 2 @ 2 x 8)
        assert tensors[f"{q}.lokr_w1"].shape == (4, 4) and tensors[f"{q}.lokr_w2_a"].shape == (8, 2)
        assert tensors[f"{q}.alpha"].item() == 1.0
    else:  # DoRA: the magnitude per input channel
        assert tensors[f"{q}.dora_scale"].shape == (1, 32)
        assert tensors[f"{q}.lora_down.weight"].shape == (2, 32) and tensors[f"{q}.alpha"].item() == 2.0

    meta = export.read_metadata(path)
    args = json.loads(meta["ss_network_args"])
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == str(config.network_alpha)
    expected = {
        "loha": {"algo": "loha", "conv_dim": "2", "conv_alpha": "0.5"},
        "lokr": {"algo": "lokr", "conv_dim": "2", "conv_alpha": "1.0", "factor": "4"},
        "dora": {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"},
    }[kind]
    assert args == expected

    base = build_tiny_sd15_pipeline(seed=0)
    assert_round_trip(result.pipeline, load_merged(path, build_tiny_sd15_pipeline(seed=0)), base)
    if kind != "dora":  # LyCORIS 4.1.3's from-state-dict loader assumes the per-output DoRA layout
        assert_round_trip(result.pipeline, load_with_lycoris(path, build_tiny_sd15_pipeline(seed=0)), base)


def test_sdxl_loha_uses_sai_names_for_both_encoders_and_reloads(models, dataset, tmp_path):
    config = TrainingConfig(**{**BASE, "base_model": "tiny-sdxl"}, output_name="xl", **TYPES["loha"])
    result = _train(config, dataset, tmp_path, models)
    path = result.files[-1].path
    names = _names(load_file(path))
    assert names == _peft_names(build_tiny_sdxl_pipeline(seed=0), conv_rank=2)
    assert any(n.startswith("lora_unet_input_blocks_") for n in names)
    assert any(n.startswith("lora_unet_output_blocks_") for n in names)
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_te_")) for n in names)
    assert {n[:22] for n in names if n.startswith("lora_te")} == {
        "lora_te1_text_model_en",
        "lora_te2_text_model_en",
    }
    assert export.read_metadata(path)["ss_base_model_version"].startswith("sdxl_")
    base = build_tiny_sdxl_pipeline(seed=0)
    assert_round_trip(result.pipeline, load_merged(path, build_tiny_sdxl_pipeline(seed=0)), base, sdxl=True)


def test_unet_only_lycoris_file_has_no_text_encoder_keys(models, dataset, tmp_path):
    config = TrainingConfig(**{**BASE, "text_encoder_lr": 0}, output_name="u", **TYPES["lokr"])
    names = _names(load_file(_train(config, dataset, tmp_path, models).files[-1].path))
    assert names and all(n.startswith("lora_unet_") for n in names)


def test_resumed_lycoris_run_writes_the_same_file(models, dataset, tmp_path):
    config = TrainingConfig(**{**BASE, "epochs": 2}, output_name="r", **TYPES["dora"])
    straight = _train(config, dataset, tmp_path / "a", models)
    states: list[Path] = []

    def keep(path: Path, epoch: int, step: int) -> None:
        states.append(shutil.copyfile(path, tmp_path / f"state-{step}.pt"))

    hooks = EngineHooks(on_state_saved=keep)
    _train(config, dataset, tmp_path / "b", models, hooks=hooks, state_dir=tmp_path / "live")
    assert states
    resumed = _train(config, dataset, tmp_path / "c", models, resume_from=states[0])
    a, c = load_file(straight.files[-1].path), load_file(resumed.files[-1].path)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    state = torch.load(states[0], weights_only=True)
    assert any(k.startswith("lycoris.") and k.endswith("dora_scale") for k in state["weights"])


# --- config validation (422s naming the field) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"network_type": "ia3"}, "network_type"),
        ({"lokr_factor": 4}, "lokr_factor needs network_type 'lokr'"),
        ({"network_type": "loha", "lokr_factor": 4}, "lokr_factor needs network_type 'lokr'"),
        ({"network_type": "lokr", "lokr_factor": 0}, "lokr_factor"),
        ({"dora_wd": True, "network_dim": 4, "network_alpha": 2.0}, "network_alpha equal to network_dim"),
        (
            {"dora_wd": True, "network_dim": 2, "network_alpha": 2, "conv_dim": 4},
            "conv_alpha equal to conv_dim",
        ),
    ],
)
def test_invalid_network_combinations_are_refused(fields, needle):
    with pytest.raises(ValidationError, match=needle):
        TrainingConfig(base_model="m", **fields)


def test_network_defaults_mean_what_they_meant():
    config = TrainingConfig(base_model="m")
    assert (config.network_type, config.lokr_factor, config.dora_wd, config.uses_lycoris) == (
        "lora",
        None,
        False,
        False,
    )
    assert TrainingConfig(base_model="m", conv_dim=4).uses_lycoris is False  # LoCon stays PEFT's
    for fields in ({"network_type": "loha"}, {"network_type": "lokr", "lokr_factor": 8}):
        assert TrainingConfig(base_model="m", **fields).uses_lycoris
    dora = TrainingConfig(
        base_model="m", network_dim=4, network_alpha=4, conv_dim=2, conv_alpha=2, dora_wd=True
    )
    assert dora.uses_lycoris
