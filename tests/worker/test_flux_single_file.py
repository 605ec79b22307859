"""FLUX.1 as users download it (worker/training/flux_single_file.py): BFL's transformer file with
ComfyUI's companion files, written from the tiny FLUX pipeline (worker/devtools/flux_single_file.py), loaded
back to the same weights; and the shipped full-size configs checked on the meta device against diffusers'
own converter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from worker.devtools.flux_single_file import (
    COMFYUI_PREFIX,
    save_comfyui_flux,
    save_flux_config_folder,
    transformer_to_bfl,
)
from worker.devtools.tiny_flux import build_tiny_flux_pipeline
from worker.training.flux_bfl_keys import bfl_to_diffusers
from worker.training.flux_single_file import load_flux_single_file, locate_flux_single_file
from worker.training.model_loading import BaseModelError, ResolvedModel, resolve_base_model
from worker.training.single_file_configs import BASE_CONFIGS

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# FLUX.1's public parameter counts (transformer dev / schnell, ae.safetensors, CLIP-L text, T5-XXL encoder).
PARAMS = {
    "dev": 11_901_408_320,
    "schnell": 11_891_178_560,
    "vae": 83_819_683,
    "text_encoder": 123_060_480,
    "text_encoder_2": 4_762_310_656,
}


@pytest.fixture(scope="module")
def pipes() -> dict[str, FluxPipeline]:
    return {"dev": build_tiny_flux_pipeline(), "schnell": build_tiny_flux_pipeline(guidance_embeds=False)}


def comfyui(tmp_path: Path, pipe: FluxPipeline, *, tokenizers: bool = True, **kw) -> ResolvedModel:
    """A models folder as a ComfyUI user has it, plus configs/flux1/ with the tiny configs (no scheduler)."""
    models = tmp_path / "models"
    model_file = save_comfyui_flux(pipe, models, **kw)
    configs = save_flux_config_folder(pipe, models / "configs" / "flux1")
    if not tokenizers:
        shutil.rmtree(configs / "tokenizer")
        shutil.rmtree(configs / "tokenizer_2")
    return resolve_base_model(model_file.relative_to(models).as_posix(), models, cache_dir=tmp_path / "hf")


def assert_same_weights(loaded: FluxPipeline, pipe: FluxPipeline, cast=lambda name, t: t) -> None:
    for name in COMPONENTS:
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        assert [k for k in want if not torch.equal(got[k], cast(name, want[k]))] == [], name


def transformer_output(transformer: FluxTransformer2DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    config = transformer.config
    kwargs = {
        "hidden_states": torch.randn(1, 16, config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, 8, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
        "guidance": torch.tensor([3.5]) if config.guidance_embeds else None,
    }
    with torch.no_grad():
        return transformer(**kwargs).sample


def test_comfyui_layout_loads_every_component_exactly(tmp_path: Path, pipes):
    pipe = pipes["dev"]
    loaded = load_flux_single_file(comfyui(tmp_path, pipe))
    assert_same_weights(loaded, pipe)
    assert torch.equal(transformer_output(loaded.transformer), transformer_output(pipe.transformer))
    assert loaded.transformer.config.guidance_embeds is True
    assert (loaded.vae.config.shift_factor, loaded.vae.config.scaling_factor) == (0.1159, 0.3611)
    scheduler = loaded.scheduler.config  # configs/flux1/ has none: the shipped dev one
    assert (scheduler.shift, scheduler.use_dynamic_shifting) == (3.0, True)
    for name in ("tokenizer", "tokenizer_2"):
        prompt = "a red toy car"
        assert getattr(loaded, name)(prompt).input_ids == getattr(pipe, name)(prompt).input_ids


def test_schnell_beside_the_model_with_comfyui_prefix_and_bare_clip_keys(tmp_path: Path, pipes):
    pipe = pipes["schnell"]
    models = tmp_path / "models"
    model_file = save_comfyui_flux(
        pipe, models, beside=True, prefix=COMFYUI_PREFIX, clip_text_model_prefix=False
    )
    assert sorted(p.name for p in model_file.parent.iterdir()) == [
        "ae.safetensors",
        "clip_l.safetensors",
        "flux1-schnell.safetensors",
        "t5xxl_fp16.safetensors",
    ]
    assert next(iter(load_file(model_file))).startswith(COMFYUI_PREFIX)
    # The shared folder holds dev's configs (guidance_embeds true): the file's keys decide.
    save_flux_config_folder(pipes["dev"], models / "configs" / "flux1")
    resolved = resolve_base_model("flux/flux1-schnell.safetensors", models)

    files = locate_flux_single_file(resolved)
    assert (files.variant, files.prefix) == ("schnell", COMFYUI_PREFIX)
    assert {k: p.parent.name for k, p in files.weights.items()} == dict.fromkeys(COMPONENTS, "flux")
    loaded = load_flux_single_file(resolved)
    assert loaded.transformer.config.guidance_embeds is False
    assert (loaded.scheduler.config.shift, loaded.scheduler.config.use_dynamic_shifting) == (1.0, False)
    assert_same_weights(loaded, pipe)
    assert torch.equal(transformer_output(loaded.transformer), transformer_output(pipe.transformer))


def test_bf16_file_loads_exactly_and_in_the_asked_dtype(tmp_path: Path, pipes):
    pipe = pipes["dev"]
    resolved = comfyui(tmp_path, pipe, transformer_dtype=torch.bfloat16, t5_dtype=torch.float16)
    rounded = {"transformer": torch.bfloat16, "text_encoder_2": torch.float16}

    def cast(name, t):
        return t.to(rounded[name]).float() if name in rounded else t

    assert_same_weights(load_flux_single_file(resolved), pipe, cast)
    in_bf16 = load_flux_single_file(resolved, dtype=torch.bfloat16)
    # the VAE stays float32 whatever the training dtype (it runs once per image, as for every family)
    dtypes = {name: {p.dtype for p in getattr(in_bf16, name).parameters()} for name in COMPONENTS}
    assert all(d == ({torch.float32} if n == "vae" else {torch.bfloat16}) for n, d in dtypes.items()), dtypes
    assert_same_weights(
        in_bf16, pipe, lambda name, t: cast(name, t) if name == "vae" else cast(name, t).to(torch.bfloat16)
    )


def test_fp8_files_are_upcast_within_fp8_precision(tmp_path: Path, pipes):
    pipe = pipes["dev"]
    fp8 = torch.float8_e4m3fn
    resolved = comfyui(tmp_path, pipe, transformer_dtype=fp8, t5_dtype=fp8)
    files = locate_flux_single_file(resolved)
    assert files.weights["text_encoder_2"].name == "t5xxl_fp8_e4m3fn.safetensors"
    loaded = load_flux_single_file(resolved)
    assert loaded.transformer.dtype == torch.float32
    for name in ("transformer", "text_encoder_2"):
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        for key, tensor in want.items():
            assert torch.equal(got[key], tensor.to(fp8).float()), key  # exactly the file's values
            # e4m3: 3 mantissa bits (relative error <= 2^-4), subnormal steps of 2^-9
            torch.testing.assert_close(got[key], tensor, rtol=2**-4, atol=2**-10)
    assert_same_weights(
        loaded, pipe, lambda name, t: t.to(fp8).float() if name in ("transformer", "text_encoder_2") else t
    )
    assert (transformer_output(loaded.transformer) - transformer_output(pipe.transformer)).abs().max() < 0.5


def test_a_missing_companion_names_the_file_and_where_to_put_it(tmp_path: Path, pipes):
    resolved = comfyui(tmp_path, pipes["dev"])
    (resolved.models_dir / "clip" / "t5xxl_fp16.safetensors").unlink()
    with pytest.raises(BaseModelError) as err:
        load_flux_single_file(resolved)
    message = str(err.value)
    assert "the T5-XXL text encoder: put t5xxl_fp16.safetensors" in message
    assert "comfyanonymous/flux_text_encoders" in message
    assert "beside flux1-dev.safetensors or in text_encoders/ of the models folder" in message
    assert "in the models folder's top, text_encoders/, clip/" in message
    assert "VAE" not in message and "CLIP-L" not in message and str(tmp_path) not in message

    for folder in ("vae", "clip"):
        shutil.rmtree(resolved.models_dir / folder)
    with pytest.raises(BaseModelError) as err:
        locate_flux_single_file(resolved)
    message = str(err.value)
    for name in ("ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"):
        assert f"put {name}" in message
    assert "in vae/ of the models folder" in message


def test_tokenizers_come_from_the_hf_cache_or_the_error_says_what_to_put_where(tmp_path: Path, pipes):
    pipe = pipes["dev"]
    resolved = comfyui(tmp_path, pipe, tokenizers=False)
    with pytest.raises(BaseModelError) as err:
        locate_flux_single_file(resolved)
    message = str(err.value)
    assert "tokenizer/ and tokenizer_2/" in message
    assert "`hf download black-forest-labs/FLUX.1-schnell --include 'tokenizer/*' 'tokenizer_2/*'`" in message
    assert "configs/flux1/" in message and "LORABAKE_ALLOW_MODEL_DOWNLOADS" in message
    assert str(tmp_path) not in message

    # A FLUX.1-dev snapshot in the cache (what `hf download` or a diffusers-folder user has) serves both.
    tokenizers = tmp_path / "tok"
    pipe.tokenizer.save_pretrained(tokenizers / "tokenizer")
    pipe.tokenizer_2.save_pretrained(tokenizers / "tokenizer_2")
    repo = resolved.cache_dir / "models--black-forest-labs--FLUX.1-dev"
    shutil.copytree(tokenizers, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    loaded = load_flux_single_file(resolved)
    for name in ("tokenizer", "tokenizer_2"):
        assert getattr(loaded, name)("a red toy").input_ids == getattr(pipe, name)("a red toy").input_ids


def test_quantized_and_non_flux_files_are_refused_by_name(tmp_path: Path, pipes):
    resolved = comfyui(tmp_path, pipes["dev"])
    tensors = load_file(resolved.path)
    save_file({**tensors, "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, resolved.path)
    with pytest.raises(BaseModelError, match="flux1-dev.safetensors holds quantized weights .'scaled_fp8'"):
        locate_flux_single_file(resolved)

    shutil.copyfile(resolved.models_dir / "vae" / "ae.safetensors", resolved.path)
    with pytest.raises(BaseModelError, match="is not a FLUX.1 dev or schnell transformer"):
        locate_flux_single_file(resolved)


def test_the_bfl_map_equals_diffusers_converter_tensor_for_tensor(pipes):
    # diffusers' converter splits linear1 at FLUX.1's widths (3072 x 3 + 12288): give the tiny file such rows.
    transformer = pipes["dev"].transformer
    bfl = transformer_to_bfl(transformer.state_dict(), transformer.config)
    g = torch.Generator().manual_seed(0)
    for key in [k for k in bfl if ".linear1." in k]:
        bfl[key] = torch.randn(3 * 3072 + 12288, *bfl[key].shape[1:], generator=g)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    ours = bfl_to_diffusers(
        dict(bfl), {**transformer.config, "num_attention_heads": 24, "attention_head_dim": 128}
    )
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_shipped_configs_are_flux1_and_read_bfl_files_as_diffusers_does(variant: str):
    folder = BASE_CONFIGS / f"flux1-{variant}"
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(folder / "transformer")
        )
        parts = {
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            "text_encoder_2": T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2")),
        }
    assert sum(p.numel() for p in transformer.parameters()) == PARAMS[variant]
    for name, model in parts.items():
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name], name
    assert transformer.config.guidance_embeds is (variant == "dev")
    # Full-size BFL keys as the devtools writer lays them out (780 tensors for dev): diffusers' own converter
    # (FLUX.1's widths hard-coded) and ours give the model's keys and shapes.
    state = transformer.state_dict()
    bfl = transformer_to_bfl(state, transformer.config)
    assert len(bfl) == (780 if variant == "dev" else 776)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for converted in (
        convert_flux_transformer_checkpoint_to_diffusers(dict(bfl)),
        bfl_to_diffusers(dict(bfl), transformer.config),
    ):
        assert {k: tuple(v.shape) for k, v in converted.items()} == shapes
