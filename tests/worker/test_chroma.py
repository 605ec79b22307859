"""Chroma through the engine on the session's `tiny-chroma` (built once, next to `tiny-flux`): the family is
detected, the loss falls, files carry sd-scripts' Chroma keys (FLUX.1's without the modulation Linears),
alphas and metadata, the last file on a fresh base gives the trained outputs, resume writes the same bytes,
a sample is drawn with CFG; at Chroma's real widths diffusers' ChromaPipeline.load_lora_weights reloads a
file to the trained outputs, and a full-size Chroma transformer gets exactly sd-scripts' module names."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel
from peft import LoraConfig
from PIL import Image
from safetensors.torch import load_file, save_file

from shared.catalogue.scan import ModelScanner
from shared.config.spec import TrainingConfig
from tests.worker.test_flux_reload import (
    RELOADED,
    adapted_paths,
    add_trained_lora,
    assert_changes,
    assert_close,
    diffusers_warnings,
)
from tests.worker.test_flux_training import (  # noqa: F401 (dataset: a fixture used here)
    ALPHA,
    RANK,
    _config,
    assert_resume_writes_the_same_bytes,
    dataset,
)
from worker.devtools.tiny_flux import build_tiny_chroma_transformer
from worker.training import flux_names, network
from worker.training.engine import EngineHooks, train_lora
from worker.training.export import read_metadata
from worker.training.families.flux import image_ids, pack, unpack
from worker.training.flux_merge import apply_kohya_flux_lora

BASE = "tiny-chroma"
# sd-scripts' Chroma LoRA modules, read from kohya-ss/sd-scripts 48d368f (2026-02-16): networks/lora_flux.py
# puts LoRA on every Linear of each DoubleStreamBlock / SingleStreamBlock (FLUX_TARGET_REPLACE_MODULE_*), and
# library/chroma_models.py's blocks hold these Linears (img_attn / txt_attn are flux_models.SelfAttention:
# qkv and proj; no img_mod / txt_mod / modulation: the Approximator makes the modulations).
SD_SCRIPTS_CHROMA_DOUBLE = (
    "img_attn_qkv",
    "img_attn_proj",
    "img_mlp_0",
    "img_mlp_2",
    "txt_attn_qkv",
    "txt_attn_proj",
    "txt_mlp_0",
    "txt_mlp_2",
)
SD_SCRIPTS_CHROMA_SINGLE = ("linear1", "linear2")


def _chroma_config(**kw) -> TrainingConfig:
    return _config(BASE, **kw)


@pytest.fixture(scope="module")
def chroma_run(models_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    config = _chroma_config(
        epochs=12,
        sample_prompts=["sks toy, red --n blurry --w 64 --h 64 --s 2 --d 5"],
        sample_every_n_epochs=12,
    )
    samples: list = []
    losses: list[float] = []
    hooks = EngineHooks(on_progress=lambda p: losses.append(p.loss), on_sample=samples.append)
    out = tmp_path_factory.mktemp("chroma-out")
    result = train_lora(config, dataset, out, models_dir=models_dir, device="cpu", hooks=hooks)
    return result, losses, samples


def test_the_family_is_detected_and_the_loss_falls(chroma_run):
    result, losses, _ = chroma_run
    assert result.family == "chroma" and len(losses) == 24
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.9 * first, losses


def test_files_carry_sd_scripts_chroma_keys_alphas_and_metadata(chroma_run):
    result, _, _ = chroma_run
    tensors = load_file(result.files[-1].path)
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors}
    want = {f"lora_unet_double_blocks_{i}_{n}" for i in range(2) for n in SD_SCRIPTS_CHROMA_DOUBLE}
    want |= {f"lora_unet_single_blocks_{i}_{n}" for i in range(2) for n in SD_SCRIPTS_CHROMA_SINGLE}
    assert modules == want
    assert tensors["lora_unet_double_blocks_0_txt_attn_qkv.alpha"].item() == 3 * ALPHA
    assert tensors["lora_unet_single_blocks_1_linear1.lora_down.weight"].shape[0] == 4 * RANK
    assert tensors["lora_unet_single_blocks_1_linear2.alpha"].item() == ALPHA
    meta = read_metadata(result.files[-1].path)
    assert meta["ss_base_model_version"] == "chroma" and meta["ss_model_type"] == "chroma"
    assert meta["modelspec.architecture"] == "chroma/lora"
    assert meta["ss_timestep_sampling"] == "sigmoid" and meta["ss_guidance_scale"] == "0.0"
    assert meta["ss_apply_t5_attn_mask"] == "True" and meta["ss_t5xxl_max_token_length"] == "32"


def _outputs(transformer: torch.nn.Module, text_tokens: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 8, generator=gen)
    text = torch.randn(1, text_tokens, transformer.config.joint_attention_dim, generator=gen)
    with torch.no_grad():
        out = transformer(
            hidden_states=pack(latents),
            encoder_hidden_states=text,
            timestep=torch.tensor([0.6]),
            img_ids=image_ids(8, 8, torch.device("cpu")),
            txt_ids=torch.zeros(text_tokens, 3),
            return_dict=False,
        )[0]
    return unpack(out, 8, 8)


def test_the_last_file_on_a_fresh_base_gives_the_trained_outputs(chroma_run):
    result, _, _ = chroma_run
    trained = _outputs(result.pipeline.transformer)
    base = build_tiny_chroma_transformer()  # the seed tiny-chroma was saved with
    before = _outputs(base)
    applied = apply_kohya_flux_lora(base, load_file(result.files[-1].path))
    assert len(applied) == 2 * 8 + 2 * 2
    assert (trained - before).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(_outputs(base), trained, atol=1e-5)


def test_a_sample_is_drawn_with_cfg_and_the_negative_prompt(chroma_run):
    _, _, samples = chroma_run
    assert [(s.epoch, s.path.name) for s in samples] == [(12, "fx_e000012_00.png")]
    pixels = np.asarray(Image.open(samples[0].path))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    meta = samples[0].meta()
    assert meta["cfg_scale"] == 4.0 and "guidance_scale" not in meta and meta["sampler"] == "euler"
    with Image.open(samples[0].path) as png:
        assert "Negative prompt: blurry" in png.text["parameters"]
        assert "CFG scale: 4, " in png.text["parameters"]


def test_resume_writes_the_same_bytes(models_dir: Path, dataset: Path, tmp_path: Path):  # noqa: F811
    assert_resume_writes_the_same_bytes(_chroma_config(epochs=3), dataset, models_dir, tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("guidance_scale", 1.0), ("apply_t5_attn_mask", False), ("network_train_unet_only", False)],
)
def test_values_chroma_cannot_honour_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(base_model=BASE, model_family="chroma", **{field: value})


def test_the_catalogue_scan_reports_chroma(models_dir: Path, tmp_path: Path):
    found = {e.name: e for e in ModelScanner(models_dir, hub_cache=tmp_path / "no-hub-cache").scan()}
    assert found[BASE].family == "chroma" and found[BASE].kind == "diffusers"
    assert found["tiny-flux"].family == "flux1"


# ---- Chroma's real block widths: diffusers' own reader of sd-scripts' FLUX/Chroma files ----

# Chroma1-HD's widths (24 x 128 heads, MLP 12288: what diffusers' Kohya converter splits linear1 by) with one
# block of each kind; the approximator (not trained) and the text width kept small.
REAL_WIDTH_CONFIG: dict[str, object] = {
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 64,
    "axes_dims_rope": (16, 56, 56),
    "approximator_num_channels": 16,
    "approximator_hidden_dim": 32,
    "approximator_layers": 1,
}


def test_diffusers_chroma_pipeline_reloads_a_file_to_the_trained_outputs(tmp_path: Path):
    torch.manual_seed(0)
    model = ChromaTransformer2DModel(**REAL_WIDTH_CONFIG).eval()  # type: ignore[arg-type]
    fresh = copy.deepcopy(model)  # the base the file is loaded into
    base = _outputs(model)
    targets = flux_names.flux_lora_target_paths(model)
    add_trained_lora(model, targets, up_std=1.0)
    trained = _outputs(model)
    assert_changes(trained, base)
    tensors = flux_names.kohya_flux_state_dict(model, network_alpha=ALPHA, save_dtype=torch.float32)
    save_file(tensors, str(tmp_path / "chroma.safetensors"))

    none: dict = dict.fromkeys(("scheduler", "vae", "text_encoder", "tokenizer"))
    pipe = ChromaPipeline(transformer=fresh, **none)
    with diffusers_warnings() as records:
        pipe.load_lora_weights(str(tmp_path / "chroma.safetensors"), adapter_name=RELOADED)
    unexpected = [r.getMessage() for r in records if "text_encoder" not in r.getMessage()]
    assert not unexpected, unexpected  # every key loaded (no CLIP-L or T5 keys in the file)
    assert adapted_paths(fresh, RELOADED) == set(targets)
    assert_close(_outputs(fresh), trained)


# ---- full-size Chroma: names and count against sd-scripts ----


def test_full_size_chroma_gets_exactly_sd_scripts_module_names():
    with torch.device("meta"):
        transformer = ChromaTransformer2DModel()  # diffusers' defaults: Chroma1-HD (19 double, 38 single)
        config = LoraConfig(
            r=RANK, lora_alpha=ALPHA, target_modules=flux_names.flux_lora_target_paths(transformer)
        )
        transformer.add_adapter(config, adapter_name=network.ADAPTER_NAME)
    expected = [f"lora_unet_double_blocks_{i}_{s}" for i in range(19) for s in SD_SCRIPTS_CHROMA_DOUBLE] + [
        f"lora_unet_single_blocks_{i}_{s}" for i in range(38) for s in SD_SCRIPTS_CHROMA_SINGLE
    ]
    names = flux_names.kohya_flux_module_names(transformer)
    assert names == expected and len(names) == 19 * 8 + 38 * 2
    # every Linear of every block is adapted (diffusers splits qkv and linear1), nothing outside them
    paths = [n for n, _ in network.lora_layers(transformer)]
    block_linears = [
        n.removesuffix(".base_layer")
        for n, m in transformer.named_modules()
        if n.startswith(("transformer_blocks.", "single_transformer_blocks."))
        and isinstance(m, torch.nn.Linear)
        and ".lora_" not in n
    ]
    assert sorted(paths) == sorted(block_linears) and len(paths) == 19 * 12 + 38 * 5


def test_previews_load_the_file_as_adapters_and_draw(chroma_run, models_dir: Path):
    """The previews' path: the file is a `chroma` LoRA (so another family's base refuses it by name), its
    modules become adapters on a ChromaPipeline, and ChromaRenderer draws with it."""
    from worker.previews.flux_render import ChromaRenderer, T5Options
    from worker.previews.loras import load_kohya_flux_lora, lora_family
    from worker.previews.render import ImageSettings

    result, _, _ = chroma_run
    path = result.files[-1].path
    assert lora_family(path) == "chroma"
    pipe = ChromaPipeline.from_pretrained(models_dir / BASE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = _outputs(pipe.transformer)
    load_kohya_flux_lora(pipe, load_file(path), "fx")
    assert torch.allclose(_outputs(pipe.transformer), _outputs(result.pipeline.transformer), atol=1e-5)
    assert (_outputs(pipe.transformer) - base).abs().max() > 1e-3
    renderer = ChromaRenderer(pipe, t5=T5Options(32))
    settings = ImageSettings("sks toy, red", "blurry", 5, "euler", 2, 4.0, 64, 64)
    image = renderer.render(settings)
    assert image.size == (64, 64) and np.asarray(image).std() > 0
