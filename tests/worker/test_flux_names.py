"""FLUX.1 LoRA files in sd-scripts' layout: default targets and names checked on a full-size FLUX.1 dev
transformer built on the meta device against a table transcribed from sd-scripts, and the fused export
(q/k/v(/mlp) in one module) merged by hand into BFL-layout weights giving the split peft model's outputs."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
from peft import LoraConfig
from transformers import CLIPTextConfig, CLIPTextModel

from worker.devtools.tiny_models import build_tiny_text_encoder
from worker.training import flux_names, network

RANK, ALPHA = 4, 2.0
TINY_CONFIG: dict[str, object] = {
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "axes_dims_rope": (4, 6, 6),
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
}
# black-forest-labs/FLUX.1-dev transformer/config.json (the fields that shape the module tree).
FLUX1_DEV_CONFIG: dict[str, object] = {
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}

# sd-scripts' default FLUX.1 LoRA modules, from kohya-ss/sd-scripts networks/lora_flux.py at commit
# 48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16; the file last changed in 7f983c5): LoRANetwork puts a
# module on every Linear under FLUX_TARGET_REPLACE_MODULE_DOUBLE/_SINGLE ("DoubleStreamBlock",
# "SingleStreamBlock" of library/flux_models.py), named "lora_unet" + "." + module path with '.' -> '_',
# with no default exclusion (modulation included). In named_modules() order: Modulation.lin,
# SelfAttention.qkv/.proj, the MLP Sequential's 0 and 2, img then txt.
SD_SCRIPTS_DOUBLE_BLOCK = [
    "img_mod_lin",
    "img_attn_qkv",
    "img_attn_proj",
    "img_mlp_0",
    "img_mlp_2",
    "txt_mod_lin",
    "txt_attn_qkv",
    "txt_attn_proj",
    "txt_mlp_0",
    "txt_mlp_2",
]
SD_SCRIPTS_SINGLE_BLOCK = ["linear1", "linear2", "modulation_lin"]
SD_SCRIPTS_DEFAULT_COUNT = 19 * 10 + 38 * 3  # 304
# CLIP-L: every Linear under CLIPAttention / CLIPMLP, prefix LORA_PREFIX_TEXT_ENCODER_CLIP = "lora_te1".
SD_SCRIPTS_CLIP_LAYER = [
    "self_attn_k_proj",
    "self_attn_v_proj",
    "self_attn_q_proj",
    "self_attn_out_proj",
    "mlp_fc1",
    "mlp_fc2",
]

# For the hand merge: sd-scripts module suffix -> the diffusers Linears whose rows it stacks, in order, as
# diffusers' convert_flux_transformer_checkpoint_to_diffusers splits BFL's weights (written out here, not
# taken from flux_names, so that the test does not check the module against itself).
DOUBLE_ROWS = {
    "img_mod_lin": ["norm1.linear"],
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "img_attn_proj": ["attn.to_out.0"],
    "img_mlp_0": ["ff.net.0.proj"],
    "img_mlp_2": ["ff.net.2"],
    "txt_mod_lin": ["norm1_context.linear"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "txt_attn_proj": ["attn.to_add_out"],
    "txt_mlp_0": ["ff_context.net.0.proj"],
    "txt_mlp_2": ["ff_context.net.2"],
}
SINGLE_ROWS = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": ["proj_out"],
    "modulation_lin": ["norm.linear"],
}
KOHYA_UNET = re.compile(r"lora_unet_(double|single)_blocks_(\d+)_(\w+)")


def tiny_transformer(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY_CONFIG).eval()  # type: ignore[arg-type]


def with_lora(base: FluxTransformer2DModel, targets: list[str], seed: int = 1) -> FluxTransformer2DModel:
    """A copy of base with peft LoRA on targets and random (nonzero) up weights: a fresh LoRA is a no-op."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights="gaussian")
    model.add_adapter(config, adapter_name=network.ADAPTER_NAME)
    with torch.no_grad():
        for _, layer in network.lora_layers(model):
            up = layer.lora_B[network.ADAPTER_NAME].weight
            up.copy_(torch.randn(up.shape) * 0.3)
    return model


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq, txt = 16, 8
    return {
        "hidden_states": torch.randn(2, seq, 64, generator=gen),
        "encoder_hidden_states": torch.randn(2, txt, 32, generator=gen),
        "pooled_projections": torch.randn(2, 32, generator=gen),
        "timestep": torch.tensor([0.3, 0.8]),
        "guidance": torch.tensor([1.0, 3.5]),
        "img_ids": torch.randint(0, 4, (seq, 3), generator=gen).float(),
        "txt_ids": torch.zeros(txt, 3),
    }


@torch.no_grad()
def forward(model: FluxTransformer2DModel) -> torch.Tensor:
    return model(**inputs(), return_dict=False)[0]


@torch.no_grad()
def apply_kohya_flux(
    base: FluxTransformer2DModel, tensors: dict[str, torch.Tensor]
) -> FluxTransformer2DModel:
    """A copy of base with a Kohya FLUX file merged as sd-scripts merges it: the sd-scripts module's weight
    is built in BFL's layout (the diffusers parts' rows stacked), alpha / rank * up @ down added, then split
    back into the diffusers Linears."""
    model = copy.deepcopy(base)
    for name in sorted({k.split(".")[0] for k in tensors}):
        down = tensors[f"{name}.lora_down.weight"].float()
        up = tensors[f"{name}.lora_up.weight"].float()
        scale = tensors[f"{name}.alpha"].item() / down.shape[0]
        match = KOHYA_UNET.fullmatch(name)
        assert match, name
        kind, index, suffix = match.groups()
        if kind == "double":
            parts = [f"transformer_blocks.{index}.{p}" for p in DOUBLE_ROWS[suffix]]
        else:
            parts = [f"single_transformer_blocks.{index}.{p}" for p in SINGLE_ROWS[suffix]]
        linears = [model.get_submodule(p) for p in parts]
        fused = torch.cat([lin.weight for lin in linears], dim=0) + scale * (up @ down)
        for lin, rows in zip(linears, fused.split([lin.out_features for lin in linears]), strict=True):
            lin.weight.copy_(rows)
    return model


@pytest.fixture(scope="module")
def base() -> FluxTransformer2DModel:
    return tiny_transformer()


@pytest.fixture(scope="module")
def trained(base) -> FluxTransformer2DModel:
    return with_lora(base, flux_names.flux_lora_target_paths(base))


# ---- the fused file is the trained LoRA ----


def test_fused_file_merged_in_bfl_layout_gives_the_split_models_outputs(base, trained):
    tensors = flux_names.kohya_flux_state_dict(trained, network_alpha=ALPHA, save_dtype=torch.float32)
    expected = forward(trained)
    assert (expected - forward(base)).abs().max() > 0.05  # the LoRA does change the output
    got = forward(apply_kohya_flux(base, tensors))
    assert (got - expected).abs().max() < 1e-5


def test_fused_modules_are_block_diagonal_with_alpha_times_parts(trained):
    tensors = flux_names.kohya_flux_state_dict(trained, network_alpha=ALPHA, save_dtype=torch.float32)
    names = {k.split(".")[0] for k in tensors}
    assert len(names) == 2 * 10 + 2 * 3
    assert len(tensors) == 3 * len(names)
    qkv = "lora_unet_double_blocks_1_txt_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape == (3 * RANK, 32)
    assert tensors[f"{qkv}.lora_up.weight"].shape == (3 * 32, 3 * RANK)
    linear1 = "lora_unet_single_blocks_0_linear1"
    assert tensors[f"{linear1}.lora_down.weight"].shape == (4 * RANK, 32)
    assert tensors[f"{linear1}.lora_up.weight"].shape == (3 * 32 + 128, 4 * RANK)
    # rows of q take columns 0:r, rows of the MLP input columns 3r:4r; everything else is zero
    up = tensors[f"{linear1}.lora_up.weight"]
    attn = trained.single_transformer_blocks[0].attn
    q_up = attn.to_q.lora_B[network.ADAPTER_NAME].weight
    k_down = attn.to_k.lora_A[network.ADAPTER_NAME].weight
    assert torch.equal(up[:32, :RANK], q_up)
    assert torch.equal(tensors[f"{linear1}.lora_down.weight"][RANK : 2 * RANK], k_down)
    mask = torch.block_diag(*(torch.ones(n, RANK) for n in (32, 32, 32, 128))).bool()
    assert up[~mask].abs().max() == 0 and up[mask].abs().min() > 0
    # loaders scale by alpha / rank: k parts of rank r need alpha k * ALPHA to keep ALPHA / r
    for name in names:
        alpha = tensors[f"{name}.alpha"]
        assert alpha.dtype == torch.float32 and alpha.dim() == 0
        rank = tensors[f"{name}.lora_down.weight"].shape[0]
        assert alpha.item() / rank == ALPHA / RANK, name
    assert tensors[f"{qkv}.alpha"].item() == 3 * ALPHA
    assert tensors[f"{linear1}.alpha"].item() == 4 * ALPHA
    assert tensors["lora_unet_double_blocks_0_img_mod_lin.alpha"].item() == ALPHA


def test_diffusers_own_kohya_reader_reloads_the_double_blocks_to_the_trained_outputs(base):
    """diffusers' converter splits linear1 with FLUX.1's real widths (fails on a tiny model), so this
    independent reader check covers the double blocks: a file with the single blocks left out."""
    model = with_lora(base, flux_names.flux_lora_target_paths(base, train_single_block_indices="none"))
    tensors = flux_names.kohya_flux_state_dict(model, network_alpha=ALPHA, save_dtype=torch.float32)
    assert not [k for k in tensors if "single" in k]
    converted = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    reloaded = copy.deepcopy(base)
    reloaded.load_lora_adapter(converted, prefix="transformer", adapter_name="reloaded")
    assert (forward(reloaded) - forward(model)).abs().max() < 1e-5


def test_parts_without_lora_are_zero_blocks_and_the_merge_stays_exact(base):
    targets = [
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",  # no to_k: its rows stay zero
        "transformer_blocks.1.attn.add_k_proj",
        "single_transformer_blocks.1.proj_mlp",  # linear1 with only the MLP input trained
        "single_transformer_blocks.0.proj_out",
    ]
    model = with_lora(base, targets)
    tensors = flux_names.kohya_flux_state_dict(model, network_alpha=ALPHA, save_dtype=torch.float32)
    assert flux_names.kohya_flux_module_names(model) == [
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_1_txt_attn_qkv",
        "lora_unet_single_blocks_0_linear2",
        "lora_unet_single_blocks_1_linear1",
    ]
    assert {k.split(".")[0] for k in tensors} == set(flux_names.kohya_flux_module_names(model))
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"][RANK : 2 * RANK].abs().max() == 0
    assert tensors[f"{qkv}.lora_up.weight"][32:64].abs().max() == 0
    assert tensors[f"{qkv}.alpha"].item() == 3 * ALPHA
    got = forward(apply_kohya_flux(base, tensors))
    assert (got - forward(model)).abs().max() < 1e-5


def test_save_dtype_applies_to_weights_and_alpha_stays_float32(trained):
    tensors = flux_names.kohya_flux_state_dict(trained, network_alpha=ALPHA, save_dtype=torch.bfloat16)
    for key, tensor in tensors.items():
        assert tensor.dtype == (torch.float32 if key.endswith(".alpha") else torch.bfloat16), key
        assert tensor.device.type == "cpu" and tensor.is_contiguous()


def test_text_encoder_lora_is_lora_te1_with_text_model_level(base):
    model = with_lora(base, ["transformer_blocks.0.attn.to_out.0"])
    text_encoder = build_tiny_text_encoder()
    torch.manual_seed(2)
    network.add_text_encoder_lora(text_encoder, rank=RANK, alpha=ALPHA, target="all_linear")
    tensors = flux_names.kohya_flux_state_dict(
        model, text_encoder, network_alpha=ALPHA, save_dtype=torch.float32
    )
    te_names = [n for n in flux_names.kohya_flux_module_names(model, text_encoder) if n.startswith("lora_te")]
    assert sorted(te_names) == sorted(
        f"lora_te1_text_model_encoder_layers_{i}_{s}" for i in range(2) for s in SD_SCRIPTS_CLIP_LAYER
    )
    q = text_encoder.get_submodule("encoder.layers.1.self_attn.q_proj")  # transformers 5: no text_model level
    assert torch.equal(
        tensors["lora_te1_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight"],
        q.lora_B[network.ADAPTER_NAME].weight,
    )
    assert tensors["lora_te1_text_model_encoder_layers_1_self_attn_q_proj.alpha"].item() == ALPHA
    assert "lora_unet_double_blocks_0_img_attn_proj.alpha" in tensors


def test_refuses_what_it_cannot_write_faithfully(base, trained):
    with pytest.raises(ValueError, match="configured alpha"):
        flux_names.kohya_flux_state_dict(trained, network_alpha=ALPHA * 2, save_dtype=torch.float32)
    # norm_out.linear is BFL's final_layer.adaLN_modulation.1 with shift/scale swapped: no sd-scripts module
    with pytest.raises(ValueError, match="norm_out.linear"):
        flux_names.kohya_flux_state_dict(
            with_lora(base, ["norm_out.linear"]), network_alpha=ALPHA, save_dtype=torch.float32
        )
    with pytest.raises(ValueError, match="no LoRA"):
        flux_names.kohya_flux_state_dict(base, network_alpha=ALPHA, save_dtype=torch.float32)


def test_sd_scripts_in_dims_embedders_get_their_names(base):
    model = with_lora(base, ["x_embedder", "context_embedder", "time_text_embed.guidance_embedder.linear_1"])
    assert flux_names.kohya_flux_module_names(model) == [
        "lora_unet_img_in",
        "lora_unet_guidance_in_in_layer",
        "lora_unet_txt_in",
    ]


# ---- full-size FLUX.1 dev: names and count against sd-scripts ----


@pytest.fixture(scope="module")
def flux1_dev() -> FluxTransformer2DModel:
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX1_DEV_CONFIG)  # type: ignore[arg-type]
        config = LoraConfig(
            r=RANK, lora_alpha=ALPHA, target_modules=flux_names.flux_lora_target_paths(transformer)
        )
        transformer.add_adapter(config, adapter_name=network.ADAPTER_NAME)
    return transformer


def test_flux1_dev_default_names_are_sd_scripts_names(flux1_dev):
    expected = [f"lora_unet_double_blocks_{i}_{s}" for i in range(19) for s in SD_SCRIPTS_DOUBLE_BLOCK] + [
        f"lora_unet_single_blocks_{i}_{s}" for i in range(38) for s in SD_SCRIPTS_SINGLE_BLOCK
    ]
    names = flux_names.kohya_flux_module_names(flux1_dev)
    assert names == expected
    assert len(names) == SD_SCRIPTS_DEFAULT_COUNT == 304
    # diffusers holds them as 19 x 14 + 38 x 6 Linears: every Linear of every block, nothing outside them
    paths = [n for n, _ in network.lora_layers(flux1_dev)]
    assert len(paths) == 19 * 14 + 38 * 6
    block_linears = [  # the wrapped Linears are peft's base_layer; any Linear left unwrapped counts as is
        n.removesuffix(".base_layer")
        for n, m in flux1_dev.named_modules()
        if n.startswith(("transformer_blocks.", "single_transformer_blocks."))
        and isinstance(m, torch.nn.Linear)
        and ".lora_" not in n
    ]
    assert sorted(paths) == sorted(block_linears)


def test_flux1_dev_fused_widths_are_the_bfl_ones(flux1_dev):
    """3 x 3072 for qkv, 3 x 3072 + 12288 for linear1 (what sd-scripts' get_qkv_mlp_split_dims says)."""
    for module in flux_names.flux_block_modules(flux1_dev):
        widths = [flux1_dev.get_submodule(p).out_features for p in module.parts]
        if module.bfl_path.endswith("qkv"):
            assert widths == [3072] * 3
        elif module.bfl_path.endswith("linear1"):
            assert widths == [3072] * 3 + [12288]
        else:
            assert len(widths) == 1


def test_full_size_clip_l_names_are_sd_scripts_names():
    config = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
    )
    with torch.device("meta"):
        clip_l = CLIPTextModel(config)
        network.add_text_encoder_lora(clip_l, rank=RANK, alpha=ALPHA, target="all_linear")
    transformer_free = tiny_transformer()
    names = flux_names.kohya_flux_module_names(transformer_free, clip_l)
    expected = {
        f"lora_te1_text_model_encoder_layers_{i}_{s}" for i in range(12) for s in SD_SCRIPTS_CLIP_LAYER
    }
    assert len(names) == 72 and set(names) == expected


# ---- network_args that narrow or widen the targets ----


def _blocks(paths: list[str]) -> set[str]:
    return {".".join(p.split(".")[:2]) for p in paths}


def test_default_targets_every_block_linear_modulation_included(base):
    paths = flux_names.flux_lora_target_paths(base)
    assert len(paths) == 2 * 14 + 2 * 6
    for path in (
        "transformer_blocks.0.norm1.linear",
        "transformer_blocks.1.norm1_context.linear",
        "single_transformer_blocks.1.norm.linear",
        "single_transformer_blocks.0.proj_mlp",
    ):
        assert path in paths
    assert not [p for p in paths if not p.startswith(("transformer_blocks.", "single_transformer_blocks."))]


def test_block_indices_select_blocks_as_sd_scripts_parses_them(base):
    def paths(**kwargs: str) -> list[str]:
        return flux_names.flux_lora_target_paths(base, **kwargs)  # type: ignore[arg-type]

    full = paths()
    assert paths(train_double_block_indices="all", train_single_block_indices="all") == full
    assert paths(train_double_block_indices="0-1") == full
    assert paths(train_double_block_indices=" 0 , 1") == full
    assert _blocks(paths(train_double_block_indices="1")) == {
        "transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
    }
    only = paths(train_double_block_indices="none", train_single_block_indices="0")
    assert _blocks(only) == {"single_transformer_blocks.0"} and len(only) == 6
    assert paths(train_double_block_indices="", train_single_block_indices="none") == []
    for bad in ("2", "1-0", "-1", "0-2", "a", "all,0"):
        with pytest.raises(ValueError, match="block selection"):
            paths(train_double_block_indices=bad)


def test_parse_block_indices_documented_example():
    # sd-scripts docs/flux_train_network.md:
    # --network_args "train_double_block_indices=0,1,8-12,18" "train_single_block_indices=3,10,20-25,37"
    double = flux_names.parse_block_indices("0,1,8-12,18", 19)
    assert [i for i, on in enumerate(double) if on] == [0, 1, 8, 9, 10, 11, 12, 18]
    single = flux_names.parse_block_indices("3,10,20-25,37", 38)
    assert [i for i, on in enumerate(single) if on] == [3, 10, 20, 21, 22, 23, 24, 25, 37]
    assert flux_names.parse_block_indices("none", 19) == [False] * 19


def test_exclude_and_include_patterns_fullmatch_sd_scripts_module_paths(base):
    full = flux_names.flux_lora_target_paths(base)
    no_mod = flux_names.flux_lora_target_paths(
        base, exclude_patterns=[r".*(img_mod|txt_mod|modulation)\.lin"]
    )
    assert sorted(set(full) - set(no_mod)) == sorted(
        [f"transformer_blocks.{i}.{m}" for i in range(2) for m in ("norm1.linear", "norm1_context.linear")]
        + [f"single_transformer_blocks.{i}.norm.linear" for i in range(2)]
    )
    # fullmatch, as sd-scripts: a bare substring matches nothing
    assert flux_names.flux_lora_target_paths(base, exclude_patterns="img_mod") == full
    # a fused module goes as a whole: q, k and v together
    no_qkv = flux_names.flux_lora_target_paths(base, exclude_patterns=r"double_blocks\.0\.img_attn\.qkv")
    assert set(full) - set(no_qkv) == {f"transformer_blocks.0.attn.to_{x}" for x in "qkv"}
    # include overrides exclusion
    only_double_0 = flux_names.flux_lora_target_paths(
        base, exclude_patterns=[".*"], include_patterns=[r"double_blocks\.0\..*"]
    )
    assert _blocks(only_double_0) == {"transformer_blocks.0"} and len(only_double_0) == 14
    # ... but never brings back a block the indices leave out
    assert flux_names.flux_lora_target_paths(
        base, train_double_block_indices="1", include_patterns=[r"double_blocks\.0\..*"]
    ) == flux_names.flux_lora_target_paths(base, train_double_block_indices="1")
    with pytest.raises(ValueError, match="exclude_patterns"):
        flux_names.flux_lora_target_paths(base, exclude_patterns=["(unclosed"])


def test_flux1_dev_names_are_keys_comfyuis_loader_maps(flux1_dev):
    """ComfyUI's model_lora_keys_unet maps `lora_unet_` + every `diffusion_model.<BFL path>.weight` of the
    loaded FLUX model with '.' -> '_' (comfy/lora.py, its generic branch for every model); Forge's loader
    reuses it. So each name we write must be one of those, or ComfyUI drops the module."""
    from worker.training.flux_bfl_keys import bfl_tensors

    comfy_names = {
        "lora_unet_" + t.bfl.removesuffix(".weight").replace(".", "_")
        for t in bfl_tensors(19, 38, guidance=True)
        if t.bfl.endswith(".weight")
    }
    names = flux_names.kohya_flux_module_names(flux1_dev)
    assert set(names) <= comfy_names, sorted(set(names) - comfy_names)[:5]
