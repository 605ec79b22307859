"""SDXL LoRA files use the U-Net names sd-scripts' SDXL trainer writes (SAI / LDM layout), checked on a
full-size SDXL U-Net built on the meta device against a table transcribed from sd-scripts, and reloaded on the
tiny SDXL model by diffusers as the trained LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from worker.devtools.tiny_models import LATENT_SIZE, SDXL_TEXT_HIDDEN_2, TEXT_HIDDEN, build_tiny_sdxl_pipeline
from worker.training import export, network, sdxl_names

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that shape the module tree).
SDXL_BASE_UNET_CONFIG: dict[str, object] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

# (SAI prefix, diffusers prefix), written out from kohya-ss/sd-scripts library/sdxl_model_util.py
# make_unet_conversion_map() (commit 48d368f, 2026-02) for SDXL's 3 levels x 2 layers: its
# unet_conversion_map_layer, resnet entries expanded with unet_conversion_map_resnet, and the top-level
# entries.
# Entries the map lists for modules SDXL does not have (attentions in down_blocks.0 / up_blocks.2, samplers of
# the last level) are left out. Spelled out literally on purpose: this is the reference, not a re-derivation.
SD_SCRIPTS_LAYERS: list[tuple[str, str]] = [
    ("input_blocks.1.0.", "down_blocks.0.resnets.0."),
    ("input_blocks.2.0.", "down_blocks.0.resnets.1."),
    ("input_blocks.3.0.op.", "down_blocks.0.downsamplers.0.conv."),
    ("input_blocks.4.0.", "down_blocks.1.resnets.0."),
    ("input_blocks.4.1.", "down_blocks.1.attentions.0."),
    ("input_blocks.5.0.", "down_blocks.1.resnets.1."),
    ("input_blocks.5.1.", "down_blocks.1.attentions.1."),
    ("input_blocks.6.0.op.", "down_blocks.1.downsamplers.0.conv."),
    ("input_blocks.7.0.", "down_blocks.2.resnets.0."),
    ("input_blocks.7.1.", "down_blocks.2.attentions.0."),
    ("input_blocks.8.0.", "down_blocks.2.resnets.1."),
    ("input_blocks.8.1.", "down_blocks.2.attentions.1."),
    ("output_blocks.0.0.", "up_blocks.0.resnets.0."),
    ("output_blocks.0.1.", "up_blocks.0.attentions.0."),
    ("output_blocks.1.0.", "up_blocks.0.resnets.1."),
    ("output_blocks.1.1.", "up_blocks.0.attentions.1."),
    ("output_blocks.2.0.", "up_blocks.0.resnets.2."),
    ("output_blocks.2.1.", "up_blocks.0.attentions.2."),
    ("output_blocks.2.2.", "up_blocks.0.upsamplers.0."),  # "change for sdxl": after the attention
    ("output_blocks.3.0.", "up_blocks.1.resnets.0."),
    ("output_blocks.3.1.", "up_blocks.1.attentions.0."),
    ("output_blocks.4.0.", "up_blocks.1.resnets.1."),
    ("output_blocks.4.1.", "up_blocks.1.attentions.1."),
    ("output_blocks.5.0.", "up_blocks.1.resnets.2."),
    ("output_blocks.5.1.", "up_blocks.1.attentions.2."),
    ("output_blocks.5.2.", "up_blocks.1.upsamplers.0."),
    ("output_blocks.6.0.", "up_blocks.2.resnets.0."),
    ("output_blocks.7.0.", "up_blocks.2.resnets.1."),
    ("output_blocks.8.0.", "up_blocks.2.resnets.2."),
    ("middle_block.1.", "mid_block.attentions.0."),
    ("middle_block.0.", "mid_block.resnets.0."),
    ("middle_block.2.", "mid_block.resnets.1."),
]
SD_SCRIPTS_RESNET: list[tuple[str, str]] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
]
SD_SCRIPTS_TOP: list[tuple[str, str]] = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]


def _reference_map() -> dict[str, str]:
    """diffusers prefix -> SAI prefix, as sd-scripts assembles its map (resnets expanded per child)."""
    out = {hf: sd for sd, hf in SD_SCRIPTS_TOP}
    for sd, hf in SD_SCRIPTS_LAYERS:
        if "resnets" in hf:
            out.update({hf + hf_child: sd + sd_child for sd_child, hf_child in SD_SCRIPTS_RESNET})
        else:
            out[hf] = sd
    return out


REFERENCE = _reference_map()


def reference_sai(key: str) -> str:
    """sd-scripts' convert_unet_state_dict on one dotted name: the longest listed prefix wins."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n]) + "."
        if prefix in REFERENCE:
            return (REFERENCE[prefix] + key[len(prefix) :]).rstrip(".")
    raise AssertionError(f"{key} is not in sd-scripts' SDXL conversion map")


def meta_sdxl_unet() -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(SDXL_BASE_UNET_CONFIG)


@pytest.fixture(scope="module")
def locon_unet() -> UNet2DConditionModel:
    """Full-size SDXL U-Net (no memory: meta tensors) carrying lorabake's widest module set: every Linear /
    1x1 conv in attention blocks (all_linear) plus LoCon's resnet and sampler convs."""
    unet = meta_sdxl_unet()
    with torch.device("meta"):
        network.add_lora(unet, None, rank=4, alpha=1.0, target="all_linear", conv_rank=4, conv_alpha=1.0)
    return unet


def _paths(unet: torch.nn.Module) -> dict[int, str]:
    return {id(module): path for path, module in unet.named_modules()}


def test_every_state_dict_key_maps_as_sd_scripts_maps_it():
    """The whole U-Net (norms, embeddings and conv_in/out included), not just what LoRA trains."""
    unet = meta_sdxl_unet()
    names = sdxl_names.SaiNames(unet.config)
    keys = list(unet.state_dict())
    assert len(keys) > 1600
    for key in keys:
        module, param = key.rsplit(".", 1)
        assert f"{names.to_sai(module)}.{param}" == reference_sai(key), key
    sai_keys = {f"{names.to_sai(k.rsplit('.', 1)[0])}.{k.rsplit('.', 1)[1]}" for k in keys}
    assert len(sai_keys) == len(keys)  # one SAI key per diffusers key
    # every block of the table is a real module (a resnet's conv_shortcut exists only where channels change)
    blocks = [hf for _, hf in SD_SCRIPTS_LAYERS + SD_SCRIPTS_TOP]
    assert [b for b in blocks if not any(k.startswith(b) for k in keys)] == []


def test_every_lora_module_gets_the_name_sd_scripts_writes(locon_unet):
    paths = _paths(locon_unet)
    named = export.kohya_modules(locon_unet, None)
    # sd-scripts' SDXL LoRA: 722 modules in Transformer2DModel blocks (70 transformer blocks x 10 Linear +
    # proj_in/proj_out of 11 blocks), plus 66 with conv_dim (17 resnets x 3, 11 skip convs, 2 + 2 samplers).
    assert len(named) == 788
    for key, layer in named:
        assert key == "lora_unet_" + reference_sai(paths[id(layer)]).replace(".", "_")
    keys = [k for k, _ in named]
    assert len(set(keys)) == len(keys)
    assert not [k for k in keys if any(d in k for d in ("down_blocks", "up_blocks", "mid_block"))]
    # the modules A1111's diffusers-name guess gets wrong for SDXL, and samplers in general
    for key in (
        "output_blocks_2_2_conv",
        "output_blocks_5_2_conv",
        "input_blocks_3_0_op",
        "input_blocks_6_0_op",
    ):
        assert "lora_unet_" + key in keys
    for key in (
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "input_blocks_4_1_proj_in",
        "middle_block_1_transformer_blocks_9_ff_net_0_proj",
        "output_blocks_0_1_transformer_blocks_9_attn2_to_out_0",
        "output_blocks_8_0_skip_connection",
        "input_blocks_1_0_emb_layers_1",
    ):
        assert "lora_unet_" + key in keys


def test_the_mapping_is_a_bijection_and_reads_back(locon_unet):
    names = sdxl_names.SaiNames(locon_unet.config)
    reader = sdxl_names.kohya_module_names("lora_unet_", locon_unet)
    paths = _paths(locon_unet)
    for key, layer in export.kohya_modules(locon_unet, None):
        path = paths[id(layer)]
        assert names.to_diffusers(names.to_sai(path)) == path
        assert reader[key] == path  # files written now
        assert reader[export.kohya_name("lora_unet_", path)] == path  # files of earlier versions
    with pytest.raises(KeyError):
        names.to_sai("down_blocks.0.nonexistent_block")


def test_embeddings_map_where_trained():
    names = sdxl_names.SaiNames(SDXL_BASE_UNET_CONFIG)
    assert names.to_sai("time_embedding.linear_2") == "time_embed.2"
    assert names.to_sai("add_embedding.linear_1") == "label_emb.0.0"
    assert names.to_diffusers("label_emb.0.2") == "add_embedding.linear_2"


def test_sd1_and_sd2_unets_keep_diffusers_names():
    config = {**SDXL_BASE_UNET_CONFIG, "addition_embed_type": None}
    assert not sdxl_names.is_sdxl_unet(config) and sdxl_names.is_sdxl_unet(SDXL_BASE_UNET_CONFIG)


# --- tiny SDXL: written with SAI names, reloaded by diffusers as the trained LoRA ---------------------------


def _randomise_up_weights(models, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for _, layer in network.lora_layers(model):
                up = layer.lora_B["default"].weight
                up.copy_(torch.randn(up.shape, generator=gen) * 0.2)


@torch.no_grad()
def _unet_out(pipe) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, LATENT_SIZE, LATENT_SIZE, generator=gen)
    hidden = torch.randn(1, 77, TEXT_HIDDEN + SDXL_TEXT_HIDDEN_2, generator=gen)
    cond = {
        "text_embeds": torch.randn(1, SDXL_TEXT_HIDDEN_2, generator=gen),
        "time_ids": torch.tensor([[64.0] * 6]),
    }
    return pipe.unet(sample, 500, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample


@pytest.fixture(scope="module")
def trained_tiny():
    pipe = build_tiny_sdxl_pipeline(seed=0)
    torch.manual_seed(0)
    network.add_lora(
        pipe.unet, pipe.text_encoder, rank=4, alpha=2.0, target="all_linear", conv_rank=2, conv_alpha=1.0
    )
    network.add_text_encoder_lora(pipe.text_encoder_2, rank=4, alpha=2.0, target="all_linear")
    _randomise_up_weights((pipe.unet, pipe.text_encoder, pipe.text_encoder_2))
    return pipe


def _save(pipe, path: Path) -> Path:
    return export.save_kohya_lora(
        pipe.unet,
        pipe.text_encoder,
        path,
        text_encoder_2=pipe.text_encoder_2,
        network_alpha=2.0,
        conv_alpha=1.0,
        save_dtype=torch.float32,
        metadata={},
    )


def _loaded(path: Path):
    pipe = build_tiny_sdxl_pipeline(seed=0)
    pipe.load_lora_weights(str(path))
    return pipe


def test_tiny_sdxl_file_has_sai_names_and_reloads_exactly(trained_tiny, tmp_path):
    path = _save(trained_tiny, tmp_path / "xl.safetensors")
    tensors = load_file(path)
    unet_modules = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert unet_modules and all(m.split("_")[2] in ("input", "middle", "output") for m in unet_modules)
    # the tiny layout: 2 levels, 1 layer each; the up level with attention ends in its upsampler at .2
    for m in (
        "input_blocks_2_0_op",
        "output_blocks_1_2_conv",
        "input_blocks_3_1_transformer_blocks_1_attn2_to_k",
    ):
        assert f"lora_unet_{m}" in unet_modules
    reader = sdxl_names.kohya_module_names("lora_unet_", trained_tiny.unet)
    assert unet_modules <= set(reader)

    want, base = _unet_out(trained_tiny), _unet_out(build_tiny_sdxl_pipeline(seed=0))
    got = _unet_out(_loaded(path))
    assert (want - base).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_files_with_earlier_diffusers_names_still_read(trained_tiny, tmp_path):
    """lorabake wrote SDXL U-Net keys in diffusers naming before; such files name the same modules."""
    path = _save(trained_tiny, tmp_path / "new.safetensors")
    reader = sdxl_names.kohya_module_names("lora_unet_", trained_tiny.unet)
    old = {}
    for key, tensor in load_file(path).items():
        module, rest = key.split(".", 1)
        if module.startswith("lora_unet_"):
            module = export.kohya_name("lora_unet_", reader[module])
        old[f"{module}.{rest}"] = tensor
    assert any("down_blocks" in k for k in old)
    old_path = tmp_path / "old.safetensors"
    save_file(old, str(old_path))
    assert all(k.split(".")[0] in reader for k in old if k.startswith("lora_unet_"))
    # The same LoRA either way: equal up to float32 noise (the two loads sum in different orders; 1.2e-6 was
    # seen on a clean CI run), far below the LoRA's own effect (> 1e-2, test above).
    torch.testing.assert_close(_unet_out(_loaded(old_path)), _unet_out(_loaded(path)), atol=1e-5, rtol=0)
