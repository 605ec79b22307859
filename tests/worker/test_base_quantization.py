"""Base weights in less memory (fp8_base / base_quantization) on tiny models on the CPU: fp8 and int8 runs
train (the loss falls), write files with exactly the keys, shapes and dtypes of an unquantized run that apply
to a fresh base like any other, and hold fewer bytes of frozen weights; PEFT's LoRA wraps the quantized
Linear layers of an SD UNet too; nf4 without CUDA is refused before any work, naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_flux import build_tiny_flux_transformer, save_tiny_flux
from worker.devtools.tiny_models import build_tiny_sd15_pipeline
from worker.training import base_quantization, checkpoints, network
from worker.training.engine import EngineHooks, train_lora
from worker.training.errors import TrainingSetupError
from worker.training.export import read_metadata
from worker.training.flux_merge import apply_kohya_flux_lora

MODES = {"none": {}, "fp8": {"fp8_base": True}, "int8": {"base_quantization": "int8"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """One tiny FLUX.1 dev run per mode, same seed and data: (result, losses)."""
    root = tmp_path_factory.mktemp("quantized")
    save_tiny_flux(root / "models" / "tiny-flux")
    folder = root / "data" / "img" / "2_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.3, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    out = {}
    for mode, fields in MODES.items():
        config = TrainingConfig(
            base_model="tiny-flux",
            output_name="q",
            resolution=64,
            enable_bucket=False,
            mixed_precision="no",
            batch_size=2,
            seed=3,
            epochs=8,
            save_every_n_epochs=8,
            network_dim=4,
            network_alpha=2.0,
            unet_lr=1e-2,
            save_precision="float",
            t5xxl_max_token_length=32,
            **fields,
        )
        losses: list[float] = []
        hooks = EngineHooks(on_progress=lambda p, losses=losses: losses.append(p.loss))
        result = train_lora(
            config, root / "data", root / mode, models_dir=root / "models", device="cpu", hooks=hooks
        )
        out[mode] = (result, losses)
    return out


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_quantized_runs_train_and_write_the_files_an_unquantized_run_writes(runs, mode: str):
    result, losses = runs[mode]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.95 * np.mean(losses[:4]), losses
    reference = load_file(runs["none"][0].files[-1].path)
    tensors = load_file(result.files[-1].path)
    assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {
        k: (v.shape, v.dtype) for k, v in reference.items()
    }
    assert all(torch.isfinite(v).all() for v in tensors.values())
    assert any(not torch.equal(tensors[k], reference[k]) for k in tensors)  # trained on other numbers
    meta, ref_meta = read_metadata(result.files[-1].path), read_metadata(runs["none"][0].files[-1].path)
    for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version"):
        assert meta[key] == ref_meta[key], key
    assert (meta["ss_fp8_base"], ref_meta["ss_fp8_base"]) == (str(mode == "fp8"), "False")  # sd-scripts' key
    # the file applies to a plain (unquantized) base as any FLUX.1 LoRA does: every module, outputs moved
    base = build_tiny_flux_transformer()
    assert len(apply_kohya_flux_lora(base, tensors)) == len({k.split(".")[0] for k in tensors})


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_quantized_base_weights_hold_fewer_bytes(runs, mode: str):
    plain = base_quantization.frozen_bytes(runs["none"][0].pipeline.transformer)
    quantized = base_quantization.frozen_bytes(runs[mode][0].pipeline.transformer)
    # float32 weights ("no" precision) to 1 byte plus a scale per row; norms and biases stay float32
    assert quantized < 0.35 * plain, (quantized, plain)
    layer = runs[mode][0].pipeline.transformer.transformer_blocks[0].attn.to_q.base_layer
    assert base_quantization.is_quantized(layer) and not base_quantization.is_quantized(
        runs["none"][0].pipeline.transformer
    )


def test_peft_lora_wraps_the_quantized_linears_of_an_sd_unet():
    def unet_with_lora(mode: str) -> torch.nn.Module:
        unet = build_tiny_sd15_pipeline().unet.requires_grad_(False)
        base_quantization.quantize_frozen(unet, mode, torch.float32)
        torch.manual_seed(0)
        network.add_lora(unet, None, rank=4, alpha=4.0, target="all_linear", conv_rank=2)
        return unet

    plain, quantized = unet_with_lora("none"), unet_with_lora("int8")
    names = [n for n, p in plain.named_parameters() if p.requires_grad]
    assert names and names == [n for n, p in quantized.named_parameters() if p.requires_grad]
    assert base_quantization.frozen_bytes(quantized) < base_quantization.frozen_bytes(plain)
    sample = torch.randn(1, 4, 8, 8)
    out = quantized(sample, torch.tensor([10]), torch.randn(1, 77, 32), return_dict=False)[0]
    out.pow(2).mean().backward()
    grads = [p.grad for p in quantized.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_nf4_without_cuda_is_refused_before_any_work(tmp_path: Path):
    config = TrainingConfig(base_model="not-there", base_quantization="nf4")
    with pytest.raises(TrainingSetupError) as caught:  # the missing model is never looked at
        train_lora(config, tmp_path, tmp_path / "out", models_dir=tmp_path, device="cpu")
    assert caught.value.details == {"field": "base_quantization"}
    assert "CUDA" in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_backward_keeps_no_dequantized_copy_of_the_weights(mode: str):
    """A quantized layer saves only its quantized weight for backward (dequantized again there, one layer at
    a time), not a full-precision copy per layer; its input gradient is the plain layer's, up to rounding."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(3)]).requires_grad_(False)
    quantized = base_quantization.quantize_frozen(copy.deepcopy(plain), mode, torch.float32)
    x = torch.randn(4, 64)
    saved: dict[str, list[tuple[int, ...]]] = {"plain": [], "quantized": []}
    grads = {}
    for name, model in (("plain", plain), ("quantized", quantized)):
        inputs = x.clone().requires_grad_(True)
        hooks = (lambda t, name=name: saved[name].append(tuple(t.shape)) or t, lambda t: t)
        with torch.autograd.graph.saved_tensors_hooks(*hooks):
            out = model(inputs)
        out.pow(2).sum().backward()
        grads[name] = inputs.grad
    assert saved["plain"].count((64, 64)) == 3  # a plain Linear saves its (resident) weight
    assert saved["quantized"].count((64, 64)) == 0  # no dequantized 64x64 copy kept until backward
    torch.testing.assert_close(grads["quantized"], grads["plain"], rtol=0.05, atol=0.05)


def test_a_resume_state_from_before_these_fields_still_resumes():
    """A state written by a worker without fp8_base / base_quantization / vae_batch_size trained with their
    defaults: it resumes a run of the same config, and not one that sets them."""
    config = TrainingConfig(base_model="m", seed=1)
    old = config.model_dump(mode="json")
    for field in ("fp8_base", "base_quantization", "vae_batch_size"):
        del old[field]
    plan = SimpleNamespace(total_steps=10, steps_per_epoch=5)
    state = {"config": old, "total_steps": 10, "steps_per_epoch": 5}
    checkpoints.check_state(state, config, plan)
    with pytest.raises(checkpoints.ResumeStateError, match="base_quantization"):
        checkpoints.check_state(state, config.model_copy(update={"base_quantization": "int8"}), plan)
