"""Single-file checkpoints with no config folder: shipped architecture configs, detection from the header,
tokenizers from the Hugging Face cache (worker.training.single_file_configs and
model_loading.single_file_config).

Full-size models are built on the meta device only; their "checkpoints" are header-only safetensors files
(the real key names and shapes, no tensor data), which is all detection reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from shared.catalogue.families import UnsupportedCheckpoint, single_file_variant
from shared.config.spec import TrainingConfig
from worker.devtools.single_file import (
    save_sd15_single_file,
    save_sdxl_single_file,
    sd2_single_file_state_dict,
    sd15_single_file_state_dict,
    sdxl_single_file_state_dict,
)
from worker.devtools.tiny_models import (
    build_tiny_sd15_pipeline,
    build_tiny_sdxl_pipeline,
    save_tiny_sd15,
    save_tiny_sdxl,
)
from worker.training import text
from worker.training.model_loading import (
    BaseModelError,
    detect_family,
    load_pipeline,
    resolve_base_model,
    resolve_family,
    single_file_config,
)
from worker.training.single_file_configs import ASSEMBLED_DIR_NAME, BASE_CONFIGS, TOKENIZERS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAMILY = {"sd15": "sd1", "sd2-768-v": "sd2", "sdxl-base": "sdxl"}
# Parameter counts of the public models (stable-diffusion-v1-5, stable-diffusion-2-1, SDXL base 1.0).
PARAMS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2-768-v": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl-base": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}
STATE_DICTS = {
    "sd15": sd15_single_file_state_dict,
    "sd2-768-v": sd2_single_file_state_dict,
    "sdxl-base": sdxl_single_file_state_dict,
}


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors header (fp16 entries with consistent offsets) and no tensor data: what a multi-GB
    checkpoint's first bytes look like, in a few hundred KB."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        size = 2 * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def meta_components(folder: Path) -> SimpleNamespace:
    """The components a pipeline folder's configs describe, full size, on the meta device (no memory)."""
    parts = {}
    with torch.device("meta"):
        parts["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        parts["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        if (folder / "text_encoder_2").is_dir():
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(config)
    return SimpleNamespace(**parts)


def ldm_shapes(config_name: str, components: SimpleNamespace) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in STATE_DICTS[config_name](components).items()}


def hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Put files into root in the Hugging Face cache layout (models--org--name/snapshots/<commit>, refs)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    for rel, src in files.items():
        dest = repo / "snapshots" / COMMIT / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"sd15": save_tiny_sd15(root / "sd15"), "sdxl-base": save_tiny_sdxl(root / "sdxl")}


def fill_tokenizer_cache(cache: Path, config_name: str, tiny_folder: Path) -> Path:
    """The tiny model's tokenizer files, placed where the shipped config's TOKENIZERS look for them."""
    for source in TOKENIZERS[config_name]:
        tok = tiny_folder / source.folder
        files = {source.path(p.name): p for p in tok.iterdir()}
        hub_cache(cache, source.repo_id, files)
    return cache


# --- (1) full-size SD1.5 / SD2 768-v / SDXL headers resolve with the shipped configs ------------------------


@pytest.mark.parametrize("config_name", ["sd15", "sd2-768-v", "sdxl-base"])
def test_full_size_header_resolves_to_the_shipped_config(tmp_path: Path, tiny_folders, config_name: str):
    shipped = meta_components(BASE_CONFIGS / config_name)
    for name, count in PARAMS[config_name].items():  # the shipped configs are the public architectures
        assert sum(p.numel() for p in getattr(shipped, name).parameters()) == count, name
    shapes = ldm_shapes(config_name, shipped)
    write_header_only(tmp_path / "models" / "ckpt" / "model.safetensors", shapes)
    tiny = tiny_folders["sdxl-base" if config_name == "sdxl-base" else "sd15"]
    cache = fill_tokenizer_cache(tmp_path / "hf", config_name, tiny)

    resolved = resolve_base_model("ckpt/model.safetensors", tmp_path / "models", cache_dir=cache)
    family = FAMILY[config_name]
    assert detect_family(resolved) == family
    assert single_file_variant(shapes).config == config_name
    folder = single_file_config(resolved, family)
    assert folder.parent == cache / ASSEMBLED_DIR_NAME and folder.name.startswith(config_name)
    assert resolve_family(resolved) == family and single_file_config(resolved, family) == folder  # once
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    # The assembled folder loads as a pipeline folder whose components have exactly this file's weights.
    index = DiffusionPipeline.load_config(folder)
    want_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    assert index["_class_name"] == want_class.__name__
    assert ldm_shapes(config_name, meta_components(folder)) == shapes
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")
    for source in TOKENIZERS[config_name]:
        assert CLIPTokenizer.from_pretrained(folder / source.folder).model_max_length == 77


# --- (2) variants: inpainting, SD2 768-v vs 512, v_pred, refusals -------------------------------------------

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def sd15_shapes() -> dict[str, tuple[int, ...]]:
    return ldm_shapes("sd15", meta_components(BASE_CONFIGS / "sd15"))


@pytest.fixture(scope="module")
def sd2_shapes() -> dict[str, tuple[int, ...]]:
    return ldm_shapes("sd2-768-v", meta_components(BASE_CONFIGS / "sd2-768-v"))


def test_inpainting_is_refused_naming_file_and_channels(tmp_path: Path, sd15_shapes):
    write_header_only(tmp_path / "inpaint.safetensors", {**sd15_shapes, CONV_IN: (320, 9, 3, 3)})
    resolved = resolve_base_model("inpaint.safetensors", tmp_path, cache_dir=tmp_path / "hf")
    with pytest.raises(BaseModelError) as err:
        resolve_family(resolved)
    msg = str(err.value)
    assert "inpaint.safetensors" in msg and "inpainting UNet (9 input channels" in msg
    assert str(tmp_path) not in msg
    with pytest.raises(BaseModelError, match="inpainting UNet"):  # an explicit family does not bypass it
        resolve_family(resolved, "sd1")


def test_sd2_prediction_type(sd2_shapes):
    v = single_file_variant(sd2_shapes)
    assert (v.family, v.config, v.prediction_type) == ("sd2", "sd2-768-v", "v_prediction")
    base = single_file_variant(sd2_shapes, global_step=875000)  # the SD2 512-base release (.ckpt)
    assert (base.config, base.prediction_type) == ("sd2-512", "epsilon")


def test_v_pred_key_and_refusals(sd15_shapes):
    assert single_file_variant({**sd15_shapes, "v_pred": ()}).prediction_type == "v_prediction"
    assert single_file_variant(sd15_shapes).prediction_type == "epsilon"
    refused = {
        "SDXL refiner": {
            "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
            "conditioner.embedders.0.model.ln_final.weight": (1280,),
        },
        "Stable Diffusion 3": {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)},
        "Flux": {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)},
        "LoRA": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)},
        "without the weights under first_stage_model.": {
            k: v for k, v in sd15_shapes.items() if not k.startswith("first_stage_model.")
        },
    }
    for what, shapes in refused.items():
        with pytest.raises(UnsupportedCheckpoint, match=what):
            single_file_variant(shapes)


def test_a_non_standard_unet_is_refused_before_loading(tmp_path: Path, sd15_shapes, tiny_folders):
    write_header_only(tmp_path / "m" / "odd.safetensors", {**sd15_shapes, CONV_IN: (256, 4, 3, 3)})
    cache = fill_tokenizer_cache(tmp_path / "hf", "sd15", tiny_folders["sd15"])
    resolved = resolve_base_model("odd.safetensors", tmp_path / "m", cache_dir=cache)
    with pytest.raises(BaseModelError, match=r"conv_in width 256 \(expected 320\).*odd.config"):
        resolve_family(resolved)


# --- (3) a tiny single file loads with no config folder, tokenizers from a hub cache ------------------------


def _run(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    return pipe("a photo", num_inference_steps=2, height=64, width=64, output_type="np", generator=gen).images


@pytest.mark.parametrize(
    ("config_name", "build", "write"),
    [
        ("sd15", build_tiny_sd15_pipeline, save_sd15_single_file),
        ("sdxl-base", build_tiny_sdxl_pipeline, save_sdxl_single_file),
    ],
)
@torch.no_grad()
def test_tiny_single_file_loads_without_a_config_folder(
    tmp_path: Path, tiny_folders, config_name, build, write
):
    """The whole path on a tiny model: base_configs is the tiny architecture (the shipped ones are full-size),
    tokenizers come from a hub cache layout, nothing is placed beside the file."""
    tiny = tiny_folders[config_name]
    base_configs = tmp_path / "base_configs"
    shutil.copytree(
        tiny, base_configs / config_name, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*")
    )
    cache = fill_tokenizer_cache(tmp_path / "hf", config_name, tiny)
    reference = build(seed=0)
    write(reference, tmp_path / "models" / "model.safetensors")
    resolved = resolve_base_model("model.safetensors", tmp_path / "models", cache_dir=cache)
    family = FAMILY[config_name]
    assert detect_family(resolved) == family
    pipe = load_pipeline(resolved, family, base_configs=base_configs)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(reference, name, None) is not None:
            want, got = getattr(reference, name).state_dict(), getattr(pipe, name).state_dict()
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    np.testing.assert_array_equal(_run(pipe), _run(reference))
    assert not (tmp_path / "models" / "model.config").exists()


# --- (4) missing tokenizers: what to put where, before anything is loaded -----------------------------------


def test_missing_tokenizers_say_what_to_put_where(tmp_path: Path, monkeypatch, sd15_shapes):
    shipped = meta_components(BASE_CONFIGS / "sdxl-base")
    write_header_only(tmp_path / "models" / "xl" / "pony.safetensors", ldm_shapes("sdxl-base", shipped))
    resolved = resolve_base_model("xl/pony.safetensors", tmp_path / "models", cache_dir=tmp_path / "hf")

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the tokenizer check")

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_single_file", no_load)
    for call in (lambda: resolve_family(resolved), lambda: load_pipeline(resolved, "sdxl")):
        with pytest.raises(BaseModelError) as err:
            call()
        msg = str(err.value)
        assert "pony.safetensors is SDXL (shipped config sdxl-base" in msg
        assert (
            "`hf download stabilityai/stable-diffusion-xl-base-1.0 --include 'tokenizer/*' 'tokenizer_2/*'`"
            in msg
        )
        assert "LORABAKE_ALLOW_MODEL_DOWNLOADS=true" in msg
        assert "xl/pony.config, pony.config, configs/sdxl" in msg
        assert str(tmp_path) not in msg
    assert not (tmp_path / "hf").exists()  # nothing assembled, nothing downloaded

    # SD1: the tokenizer is openai/clip-vit-large-patch14's root files.
    write_header_only(tmp_path / "models" / "sd15.safetensors", sd15_shapes)
    with pytest.raises(
        BaseModelError, match="hf download openai/clip-vit-large-patch14 --include tokenizer_config"
    ):
        resolve_family(resolve_base_model("sd15.safetensors", tmp_path / "models", cache_dir=tmp_path / "hf"))

    # Downloads allowed: tried (this test process is offline) and the failure reported.
    allowed = resolve_base_model(
        "xl/pony.safetensors", tmp_path / "models", cache_dir=tmp_path / "hf", allow_download=True
    )
    with pytest.raises(BaseModelError, match="could not download the tokenizer files of stabilityai"):
        resolve_family(allowed)


def test_a_config_folder_beside_the_file_still_wins(tmp_path: Path, tiny_folders):
    reference = build_tiny_sd15_pipeline(seed=0)
    save_sd15_single_file(reference, tmp_path / "tiny.safetensors")
    shutil.copytree(tiny_folders["sd15"], tmp_path / "tiny.config")
    resolved = resolve_base_model("tiny.safetensors", tmp_path, cache_dir=tmp_path / "hf")
    assert single_file_config(resolved, "sd1") == tmp_path / "tiny.config"
    assert not (tmp_path / "hf").exists()


# --- clip_skip on SDXL: ignored with a warning, as sd-scripts -----------------------------------------------


def test_clip_skip_on_sdxl_is_ignored_with_a_warning(caplog):
    pipe = build_tiny_sdxl_pipeline(seed=0)
    config = TrainingConfig(base_model="x", clip_skip=2)
    with caplog.at_level(logging.WARNING, logger="worker.training.text"):
        text.check_options(config, "sdxl", pipe.text_encoder)  # no TrainingSetupError
    assert "clip_skip 2 is ignored on SDXL" in caplog.text
    caplog.clear()
    text.check_options(TrainingConfig(base_model="x"), "sdxl", pipe.text_encoder)
    assert caplog.text == ""
