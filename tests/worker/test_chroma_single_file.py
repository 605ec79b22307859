"""Chroma as users download it (worker/training/flux_single_file.py with its CHROMA family): BFL's
transformer file (``Chroma1-HD.safetensors``) with ComfyUI's ``ae.safetensors`` and
``t5xxl_fp16.safetensors``, no CLIP-L, written from the tiny Chroma pipeline
(worker/devtools/flux_single_file.py) and loaded back to the same weights; the shipped full-size config
checked on the meta device against diffusers' own converter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel
from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from worker.devtools.flux_single_file import (
    COMFYUI_PREFIX,
    save_chroma_config_folder,
    save_comfyui_chroma,
    save_comfyui_flux,
    transformer_to_bfl,
)
from worker.devtools.tiny_flux import build_tiny_chroma_pipeline, build_tiny_flux_pipeline
from worker.training.families.chroma import load_chroma_pipeline
from worker.training.flux_bfl_keys import bfl_to_diffusers
from worker.training.flux_single_file import load_chroma_single_file, locate_flux_single_file
from worker.training.model_loading import BaseModelError, ResolvedModel, resolve_base_model, resolve_family
from worker.training.single_file_configs import BASE_CONFIGS

COMPONENTS = ("transformer", "vae", "text_encoder")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Chroma1-HD's transformer (diffusers' ChromaTransformer2DModel defaults = lodestones/Chroma1-HD's config),
# and the FLUX.1 VAE and T5-XXL encoder it shares (tests/worker/test_flux_single_file.py's counts).
PARAMS = {"transformer": 8_899_983_424, "vae": 83_819_683, "text_encoder": 4_762_310_656}


@pytest.fixture(scope="module")
def pipe() -> ChromaPipeline:
    return build_tiny_chroma_pipeline()


def comfyui(tmp_path: Path, pipe: ChromaPipeline, *, tokenizer: bool = True, **kw) -> ResolvedModel:
    """A models folder as a ComfyUI user has Chroma, plus configs/chroma/ with the tiny configs (no
    scheduler: the shipped one)."""
    models = tmp_path / "models"
    model_file = save_comfyui_chroma(pipe, models, **kw)
    configs = save_chroma_config_folder(pipe, models / "configs" / "chroma")
    if not tokenizer:
        shutil.rmtree(configs / "tokenizer")
    return resolve_base_model(model_file.relative_to(models).as_posix(), models, cache_dir=tmp_path / "hf")


def assert_same_weights(loaded: ChromaPipeline, pipe: ChromaPipeline, cast=lambda name, t: t) -> None:
    for name in COMPONENTS:
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        assert [k for k in want if not torch.equal(got[k], cast(name, want[k]))] == [], name


def transformer_output(transformer: ChromaTransformer2DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    config = transformer.config
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 16, config.in_channels, generator=g),
            encoder_hidden_states=torch.randn(1, 8, config.joint_attention_dim, generator=g),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
        ).sample


def test_comfyui_layout_loads_every_component_exactly(tmp_path: Path, pipe):
    resolved = comfyui(tmp_path, pipe)
    assert resolve_family(resolved) == "chroma"  # detected, and its companions checked before any work
    files = locate_flux_single_file(resolved, "chroma")
    assert {k: p.name for k, p in files.weights.items()} == {
        "transformer": "Chroma1-HD.safetensors",
        "vae": "ae.safetensors",
        "text_encoder": "t5xxl_fp16.safetensors",
    }
    assert {k: p.parent.name for k, p in files.weights.items() if k != "transformer"} == {
        "vae": "vae",
        "text_encoder": "text_encoders",
    }
    loaded = load_chroma_pipeline(resolved)  # what ChromaModel.load calls
    assert isinstance(loaded, ChromaPipeline)
    assert_same_weights(loaded, pipe)
    assert torch.equal(transformer_output(loaded.transformer), transformer_output(pipe.transformer))
    assert (loaded.vae.config.shift_factor, loaded.vae.config.scaling_factor) == (0.1159, 0.3611)
    scheduler = loaded.scheduler.config  # configs/chroma/ has none: the shipped Chroma1-HD one
    assert (scheduler.shift, scheduler.use_dynamic_shifting) == (3.0, True)
    assert loaded.tokenizer("a red toy car").input_ids == pipe.tokenizer("a red toy car").input_ids


def test_beside_the_model_with_comfyui_prefix_bf16_and_a_diffusers_layout_vae(tmp_path: Path, pipe):
    models = tmp_path / "models"
    model_file = save_comfyui_chroma(
        pipe,
        models,
        name="chroma-unlocked-v50.safetensors",
        beside=True,
        prefix=COMFYUI_PREFIX,
        transformer_dtype=torch.bfloat16,
    )
    # Chroma's repo ships its VAE in diffusers' layout, which users save as ae.safetensors
    save_file(pipe.vae.state_dict(), str(model_file.parent / "ae.safetensors"))
    save_chroma_config_folder(pipe, models / "configs" / "chroma")
    assert next(iter(load_file(model_file))).startswith(COMFYUI_PREFIX)
    resolved = resolve_base_model("chroma/chroma-unlocked-v50", models)  # named by its stem

    files = locate_flux_single_file(resolved, "chroma")
    assert (files.variant, files.prefix) == ("chroma", COMFYUI_PREFIX)
    assert {p.parent.name for p in files.weights.values()} == {"chroma"}
    loaded = load_chroma_single_file(resolved, dtype=torch.bfloat16)
    dtypes = {name: {p.dtype for p in getattr(loaded, name).parameters()} for name in COMPONENTS}
    assert dtypes == {
        "transformer": {torch.bfloat16},
        "text_encoder": {torch.bfloat16},
        "vae": {torch.float32},
    }
    assert_same_weights(loaded, pipe, lambda name, t: t if name == "vae" else t.to(torch.bfloat16))


def test_a_missing_companion_names_the_file_and_no_clip_is_asked_for(tmp_path: Path, pipe):
    resolved = comfyui(tmp_path, pipe)
    (resolved.models_dir / "text_encoders" / "t5xxl_fp16.safetensors").unlink()
    with pytest.raises(BaseModelError) as err:
        resolve_family(resolved)  # the worker's check before a job does any work
    message = str(err.value)
    assert "Chroma1-HD.safetensors is a Chroma transformer without its companion files" in message
    assert "the T5-XXL text encoder: put t5xxl_fp16.safetensors" in message
    assert "beside Chroma1-HD.safetensors or in text_encoders/ of the models folder" in message
    assert "VAE" not in message and "CLIP" not in message and "clip_l" not in message
    assert str(tmp_path) not in message

    shutil.rmtree(resolved.models_dir / "vae")
    with pytest.raises(BaseModelError, match="put ae.safetensors .* in vae/ of the models folder"):
        load_chroma_single_file(resolved)


def test_the_tokenizer_comes_from_a_flux_snapshot_in_the_cache_or_the_error_says_where(tmp_path: Path, pipe):
    resolved = comfyui(tmp_path, pipe, tokenizer=False)
    with pytest.raises(BaseModelError) as err:
        locate_flux_single_file(resolved, "chroma")
    message = str(err.value)
    assert "Chroma needs its tokenizer files (tokenizer/ as a Chroma diffusers repo lays them out)" in message
    assert "`hf download black-forest-labs/FLUX.1-schnell --include 'tokenizer_2/*'`" in message
    assert "configs/chroma/" in message and str(tmp_path) not in message

    # A FLUX.1-dev snapshot (T5's tokenizer as its tokenizer_2/) serves Chroma's T5.
    repo = resolved.cache_dir / "models--black-forest-labs--FLUX.1-dev"
    pipe.tokenizer.save_pretrained(repo / "snapshots" / COMMIT / "tokenizer_2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    loaded = load_chroma_single_file(resolved)
    assert loaded.tokenizer("a red toy").input_ids == pipe.tokenizer("a red toy").input_ids


def test_a_flux_file_is_no_chroma_one_and_quantized_files_are_refused(tmp_path: Path, pipe):
    flux_file = save_comfyui_flux(build_tiny_flux_pipeline(), tmp_path / "flux")
    flux = resolve_base_model(flux_file.name, tmp_path / "flux")
    with pytest.raises(
        BaseModelError,
        match="is not a Chroma text-to-image transformer in BFL's layout: it "
        "looks like a FLUX.1 dev checkpoint",
    ):
        locate_flux_single_file(flux, "chroma")

    resolved = comfyui(tmp_path, pipe)
    tensors = load_file(resolved.path)
    save_file({**tensors, "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, resolved.path)
    with pytest.raises(BaseModelError, match="Chroma1-HD.safetensors holds quantized weights"):
        resolve_family(resolved)


def test_the_bfl_map_equals_diffusers_converter_tensor_for_tensor(pipe):
    # diffusers' converter splits linear1 at Chroma's widths (3072 x 3 + 12288): give the tiny file such rows.
    transformer = pipe.transformer
    bfl = transformer_to_bfl(transformer.state_dict(), transformer.config)
    g = torch.Generator().manual_seed(0)
    for key in [k for k in bfl if ".linear1." in k]:
        bfl[key] = torch.randn(3 * 3072 + 12288, *bfl[key].shape[1:], generator=g)
    theirs = convert_chroma_transformer_checkpoint_to_diffusers(dict(bfl))
    ours = bfl_to_diffusers(
        dict(bfl), {**transformer.config, "num_attention_heads": 24, "attention_head_dim": 128}
    )
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


def test_shipped_config_is_chroma1_hd_and_reads_bfl_files_as_diffusers_does():
    folder = BASE_CONFIGS / "chroma1-hd"
    with torch.device("meta"):
        transformer = ChromaTransformer2DModel.from_config(
            ChromaTransformer2DModel.load_config(folder / "transformer")
        )
        parts = {
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder")),
        }
    assert sum(p.numel() for p in transformer.parameters()) == PARAMS["transformer"]
    for name, model in parts.items():
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name], name
    state = transformer.state_dict()
    bfl = transformer_to_bfl(state, transformer.config)
    # 19 double blocks x 20 tensors, 38 single x 6, the approximator (5 layers x 5 + in/out_proj's 4),
    # img_in, txt_in and final_layer.linear: no modulation and no CLIP/time/guidance embedders
    assert len(bfl) == 19 * 20 + 38 * 6 + 5 * 5 + 4 + 6 == 643
    assert not any("mod" in k.split(".")[2] for k in bfl if k.startswith(("double_blocks", "single_blocks")))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for converted in (
        convert_chroma_transformer_checkpoint_to_diffusers(dict(bfl)),
        bfl_to_diffusers(dict(bfl), transformer.config),
    ):
        assert {k: tuple(v.shape) for k, v in converted.items()} == shapes
