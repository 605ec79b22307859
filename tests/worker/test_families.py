"""Model families: SD2.x 768-v and SDXL base train, save Kohya files that reload as the trained LoRA, and are
detected from diffusers folders and single-file key sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from shared.config.spec import TrainingConfig
from worker.devtools.single_file import save_sd2_single_file, save_sd15_single_file, save_sdxl_single_file
from worker.devtools.tiny_models import (
    SDXL_TEXT_HIDDEN_2,
    TEXT_HIDDEN,
    build_tiny_sd2v_pipeline,
    build_tiny_sd15_pipeline,
    build_tiny_sdxl_pipeline,
    save_tiny_sd2v,
    save_tiny_sd15,
    save_tiny_sdxl,
)
from worker.training import conditioning, export, metadata, sdxl_names
from worker.training.engine import EngineHooks, train_lora
from worker.training.export import read_metadata
from worker.training.model_loading import (
    BaseModelError,
    detect_family,
    detect_family_from_keys,
    load_pipeline,
    resolve_base_model,
)

FAMILY = {"sd15": "sd1", "sd2v": "sd2", "sdxl": "sdxl"}
RANK, ALPHA = 4, 2.0


def _config(base: str, **kw) -> TrainingConfig:
    fields = dict(
        base_model=base,
        output_name=base,
        resolution=64,
        mixed_precision="no",
        batch_size=2,
        seed=7,
        epochs=2,
        network_dim=RANK,
        network_alpha=ALPHA,
        unet_lr=1e-2,
        text_encoder_lr=1e-2,
        save_precision="float",
        trigger_word="sks",
    )
    if "enable_bucket" in TrainingConfig.model_fields:
        fields["enable_bucket"] = False  # 64 px is below the default min_bucket_reso
    return TrainingConfig(**{**fields, **kw})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_sd15(root / "sd15")
    save_tiny_sd2v(root / "sd2v")
    save_tiny_sdxl(root / "sdxl")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "img" / "1_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.5, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    return root


def _fresh(models: Path, name: str):
    pipe = load_pipeline(resolve_base_model(name, models), FAMILY[name])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(3)
    return pipe("sks toy, red", num_inference_steps=2, output_type="np", generator=gen).images


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer(["sks toy, blue"], padding="max_length", max_length=77, return_tensors="pt").input_ids


# --- detection ----------------------------------------------------------------------------------------------


def test_family_and_prediction_type_of_diffusers_folders(models: Path):
    for name, family in FAMILY.items():
        assert detect_family(resolve_base_model(name, models)) == family
    sd2 = _fresh(models, "sd2v")
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd2.unet.config.use_linear_projection and sd2.text_encoder.config.hidden_act == "gelu"
    xl = _fresh(models, "sdxl")
    assert type(xl).__name__ == "StableDiffusionXLPipeline"
    assert xl.text_encoder.config.hidden_size != xl.text_encoder_2.config.hidden_size
    assert xl.unet.config.cross_attention_dim == TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2


def _unet(extra: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    base = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    return {**base, **extra}


ATTN = "model.diffusion_model.input_blocks.1.1"
SD1_KEYS = _unet(
    {
        f"{ATTN}.proj_in.weight": (320, 320, 1, 1),
        f"{ATTN}.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
)
SD2_KEYS = _unet(
    {
        f"{ATTN}.proj_in.weight": (320, 320),
        f"{ATTN}.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.ln_final.weight": (1024,),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
    }
)
SDXL_KEYS = _unet(
    {
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
    }
)


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (SD1_KEYS, "sd1"),
        (SD2_KEYS, "sd2"),
        # An SD2 UNet saved with a transformers-layout text encoder: the 1024-wide cross-attention tells.
        ({k: v for k, v in SD2_KEYS.items() if "cond_stage_model" not in k}, "sd2"),
        (SDXL_KEYS, "sdxl"),
        ({k: v for k, v in SDXL_KEYS.items() if "embedders.1" not in k}, None),  # refiner-like
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}, None),  # a LoRA, not a base model
    ],
)
def test_family_from_single_file_keys(keys, family):
    assert detect_family_from_keys(keys) == family


def test_family_from_single_files(models: Path, tmp_path: Path, dataset: Path):
    save_sd15_single_file(build_tiny_sd15_pipeline(seed=0), tmp_path / "sd15.safetensors")
    save_file({k: torch.zeros(s) for k, s in SDXL_KEYS.items()}, str(tmp_path / "xl.safetensors"))
    torch.save({"state_dict": {k: torch.zeros(s) for k, s in SD2_KEYS.items()}}, tmp_path / "v2.ckpt")
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "vae.safetensors"))
    assert detect_family(resolve_base_model("sd15.safetensors", tmp_path)) == "sd1"
    assert detect_family(resolve_base_model("xl.safetensors", tmp_path)) == "sdxl"
    assert detect_family(resolve_base_model("v2.ckpt", tmp_path)) == "sd2"
    with pytest.raises(BaseModelError, match="not an SD1.x, SD2.x or SDXL base checkpoint"):
        detect_family(resolve_base_model("vae.safetensors", tmp_path))

    # An SDXL single file without a config folder fails, naming where it looked, before any training.
    stages: list[str] = []
    with pytest.raises(BaseModelError) as err:
        train_lora(
            _config("xl.safetensors"),
            dataset,
            tmp_path / "out",
            models_dir=tmp_path,
            hooks=EngineHooks(on_stage=stages.append),
            device="cpu",
        )
    assert "configs/sdxl" in str(err.value) and str(tmp_path) not in str(err.value)
    assert "training" not in stages
    # It fails while resolving the family (tokenizers / config checked), before the output folder is made.
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("family", "build", "save_config", "write"),
    [
        ("sd2", build_tiny_sd2v_pipeline, save_tiny_sd2v, save_sd2_single_file),
        ("sdxl", build_tiny_sdxl_pipeline, save_tiny_sdxl, save_sdxl_single_file),
    ],
)
@torch.no_grad()
def test_single_file_loads_with_the_familys_shared_config(tmp_path: Path, family, build, save_config, write):
    """An original-layout SD2 (OpenCLIP text encoder) / SDXL (two encoders, label_emb) file is detected and
    loaded offline with configs/<family>/, whose weights (another seed here) are not used."""
    reference = build(seed=0)
    save_config(tmp_path / "configs" / family, seed=5)
    write(reference, tmp_path / "ckpt" / "model.safetensors")
    resolved = resolve_base_model("ckpt/model.safetensors", tmp_path)
    assert detect_family(resolved) == family
    pipe = load_pipeline(resolved, family)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(reference, name, None) is None:
            continue
        want, got = getattr(reference, name).state_dict(), getattr(pipe, name).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    np.testing.assert_array_equal(_images(pipe), _images(reference))
    want_type = "v_prediction" if family == "sd2" else "epsilon"
    assert pipe.scheduler.config.prediction_type == want_type  # from the config folder


def test_explicit_family_that_does_not_fit_is_a_clear_error(models: Path, dataset: Path, tmp_path: Path):
    with pytest.raises(BaseModelError, match="expected a StableDiffusionXLPipeline"):
        train_lora(_config("sd15", model_family="sdxl"), dataset, tmp_path, models_dir=models, device="cpu")
    assert list(tmp_path.iterdir()) == []


# --- SDXL conditioning --------------------------------------------------------------------------------------


@torch.no_grad()
def test_sdxl_conditioning_is_the_pipelines():
    """Training feeds the UNet what StableDiffusionXLPipeline.encode_prompt gives at inference."""
    pipe = build_tiny_sdxl_pipeline(seed=0)
    ids = torch.stack([_ids(pipe.tokenizer), _ids(pipe.tokenizer_2)], dim=1)
    hidden, pooled = conditioning.encode_sdxl(pipe.text_encoder, pipe.text_encoder_2, ids)
    want_hidden, _, want_pooled, _ = pipe.encode_prompt("sks toy, blue", do_classifier_free_guidance=False)
    torch.testing.assert_close(hidden, want_hidden)
    torch.testing.assert_close(pooled, want_pooled)
    assert hidden.shape == (1, 77, TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2) and pooled.shape == (
        1,
        SDXL_TEXT_HIDDEN_2,
    )
    time_ids = conditioning.sdxl_time_ids([(768, 1024)], [(0, 32)], [(704, 1024)])
    assert time_ids.tolist() == [[768, 1024, 0, 32, 704, 1024]] and time_ids.dtype == torch.float32
    assert conditioning.square_time_ids(3, 64).tolist() == [[64, 64, 0, 0, 64, 64]] * 3


def test_sdxl_long_captions_use_token_windows(models: Path, dataset: Path, tmp_path: Path):
    """max_token_length 150 on SDXL: each 77-token window through both encoders, joined to 152 states; the
    pooled embeds are the first window's (sd-scripts' pool2[::n_size]); a run trains on them."""
    from worker.training.text import tokenize

    pipe = build_tiny_sdxl_pipeline(seed=0)
    caption = ", ".join(f"tag{i}" for i in range(60))  # far over 75 tokens
    long_ids = torch.stack([tokenize(t, [caption], 150) for t in (pipe.tokenizer, pipe.tokenizer_2)], dim=1)
    assert long_ids.shape == (1, 2, 2, 77)
    hidden, pooled = conditioning.encode_sdxl(pipe.text_encoder, pipe.text_encoder_2, long_ids)
    assert hidden.shape == (1, 152, TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2)
    first_hidden, first_pooled = conditioning.encode_sdxl(
        pipe.text_encoder, pipe.text_encoder_2, long_ids[:, :, 0]
    )
    torch.testing.assert_close(pooled, first_pooled)
    torch.testing.assert_close(hidden[:, :76], first_hidden[:, :76])  # <BOS> + the first 75 tokens

    config = _config("sdxl", max_token_length=150, epochs=1)
    result = train_lora(config, dataset, tmp_path / "out", models_dir=models)
    assert read_metadata(result.files[-1].path)["ss_max_token_length"] == "150"


# --- train, save, reload ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(models: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    return {
        name: train_lora(_config(name), dataset, out / name, models_dir=models, device="cpu")
        for name in ("sd2v", "sdxl")
    }


_TE_MODULE = r"_text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])$"
TE_KEYS = {"sd2v": re.compile(r"^lora_te" + _TE_MODULE), "sdxl": re.compile(r"^lora_te[12]" + _TE_MODULE)}


@pytest.mark.parametrize("name", ["sd2v", "sdxl"])
def test_keys_and_metadata(trained, name: str):
    result = trained[name]
    assert result.family == FAMILY[name] and [f.epoch for f in result.files] == [1, 2]
    tensors = load_file(result.files[-1].path)
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors}
    unet_names = set(sdxl_names.kohya_module_names("lora_unet_", result.pipeline.unet))
    te_modules = {m for m in modules if m.startswith("lora_te")}
    assert modules - te_modules <= unet_names and te_modules
    assert all(TE_KEYS[name].match(m) for m in te_modules), sorted(te_modules)
    prefixes = {m.split("_text_model")[0] for m in te_modules}
    assert prefixes == ({"lora_te1", "lora_te2"} if name == "sdxl" else {"lora_te"})
    if name == "sdxl":  # SAI UNet names (sd-scripts'); the second level holds 2 transformer blocks
        assert any(m.startswith("lora_unet_input_blocks_3_1_transformer_blocks_1_") for m in modules)
        assert not any(m.startswith("lora_unet_down_blocks_") for m in modules)
    assert all(t.item() == ALPHA for k, t in tensors.items() if k.endswith(".alpha"))

    meta = read_metadata(result.files[-1].path)
    want = {
        "sd2v": ("sd_v2_v", "True", "True", "stable-diffusion-v2-768-v/lora", "diffusers", "v"),
        "sdxl": (
            "sdxl_base_v1-0",
            "False",
            "False",
            "stable-diffusion-xl-v1-base/lora",
            "https://github.com/Stability-AI/generative-models",
            "epsilon",
        ),
    }[name]
    got = tuple(
        meta[k]
        for k in (
            "ss_base_model_version",
            "ss_v2",
            "ss_v_parameterization",
            "modelspec.architecture",
            "modelspec.implementation",
            "modelspec.prediction_type",
        )
    )
    assert got == want
    assert meta["modelspec.sai_model_spec"] == export.MODELSPEC_VERSION
    assert (meta["modelspec.title"], meta["modelspec.resolution"]) == (name, "64x64")
    assert meta["modelspec.trigger_phrase"] == "sks"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["modelspec.date"])


@pytest.mark.parametrize("name", ["sd2v", "sdxl"])
@torch.no_grad()
def test_saved_file_reloads_as_the_trained_lora(models: Path, trained, name: str):
    result = trained[name]
    trained_pipe, base, loaded = result.pipeline, _fresh(models, name), _fresh(models, name)
    loaded.load_lora_weights(str(result.files[-1].path))
    want, got, before = _images(trained_pipe), _images(loaded), _images(base)
    diff, effect = float(np.abs(got - want).max()), float(np.abs(want - before).max())
    print(f"\n[roundtrip {name} float] max abs image diff {diff:.2e}; LoRA effect {effect:.3f}")
    assert diff < 1e-4
    assert effect > 0.01

    encoders = [("text_encoder", "tokenizer")]
    if name == "sdxl":
        encoders.append(("text_encoder_2", "tokenizer_2"))
    for te_name, tok_name in encoders:
        ids = _ids(getattr(base, tok_name))
        te_want = getattr(trained_pipe, te_name)(ids)[0]
        assert (te_want - getattr(base, te_name)(ids)[0]).abs().max() > 1e-3, te_name  # the LoRA trained it
        assert (getattr(loaded, te_name)(ids)[0] - te_want).abs().max() < 1e-5, te_name


def test_unet_only_sdxl_and_epsilon_override_for_sd2(models: Path, dataset: Path, tmp_path: Path):
    """Frozen encoders (SDXL's pooled embeds cached) and v_parameterization=False on a v model."""
    xl = train_lora(
        _config("sdxl", text_encoder_lr=0, epochs=1),
        dataset,
        tmp_path / "xl",
        models_dir=models,
        device="cpu",
    )
    assert np.isfinite(xl.final_loss)
    assert all(k.startswith("lora_unet_") for k in load_file(xl.files[-1].path))

    sd2 = train_lora(
        _config("sd2v", text_encoder_lr=0, epochs=1, v_parameterization=False),
        dataset,
        tmp_path / "sd2",
        models_dir=models,
        device="cpu",
    )
    assert sd2.v_parameterization is False and sd2.pipeline.scheduler.config.prediction_type == "epsilon"
    meta = read_metadata(sd2.files[-1].path)
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_v_parameterization"]) == (
        "sd_v2",
        "True",
        "False",
    )
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    assert meta["modelspec.prediction_type"] == "epsilon"


def test_metadata_strings():
    config = _config("sd15", resolution=512, trigger_word=None)
    assert export.modelspec_metadata(config, family="sd1", v_parameterization=False) == {
        "modelspec.sai_model_spec": export.MODELSPEC_VERSION,
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "sd15",
        "modelspec.resolution": "512x512",
        "modelspec.prediction_type": "epsilon",
        "modelspec.implementation_version": metadata.lorabake_version(),
    }
    assert export.base_model_version("sd1", False) == "sd_v1"
    assert export.base_model_version("sd1", True) == "sd_v1_v"
    assert export.base_model_version("sd2", False) == "sd_v2"
    assert export.base_model_version("sd2", True) == "sd_v2_v"
    assert export.base_model_version("sdxl", False) == "sdxl_base_v1-0"
