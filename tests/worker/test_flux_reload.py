"""FLUX.1 LoRA files written by flux_names reload to the trained model's outputs: through diffusers' own
Kohya FLUX reader (``FluxPipeline.load_lora_weights``) on a transformer at FLUX.1's real widths (one double
and one single block, so it fits CI), and through flux_merge's weight merge at any width.

The trained model is what the engine builds: peft LoRA (network.lora_config) on
flux_names.flux_lora_target_paths, split q/k/v(/mlp); the reference outputs are that peft model's."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from worker.devtools.tiny_flux import build_tiny_flux_transformer
from worker.training import flux_names, network
from worker.training.flux_merge import apply_kohya_flux_lora, merged_copy

RANK, ALPHA = 4, 2.0
RELOADED = "reloaded"
# FLUX.1's widths (inner 24 x 128 = 3072, MLP 12288: what diffusers' converter splits linear1 by) with one
# block of each kind and small text widths: ~531M parameters, 2.1 GB in float32.
REAL_WIDTH_CONFIG: dict[str, object] = {
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
NO_TEXT_ENCODER_KEYS = "No LoRA keys associated to NoneType found with the prefix='text_encoder'"
# Relative to the output's scale: float32 sums in another order (a merged weight). Seen on CPU: diffusers'
# reload 0 (bit-identical to the peft model), the merge ~4e-7.
TOLERANCE = 1e-5
CHANGE = 1e-2  # the least a LoRA must move the output (relative) for a comparison to mean anything


def add_trained_lora(
    transformer: FluxTransformer2DModel, targets: list[str], *, seed: int = 1, up_std: float = 0.3
) -> None:
    """The engine's adapter (network.lora_config: Kohya's init, zero up) with seeded random up weights, since
    a fresh LoRA is a no-op."""
    torch.manual_seed(seed)
    transformer.add_adapter(network.lora_config(RANK, ALPHA, targets), adapter_name=network.ADAPTER_NAME)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in network.lora_layers(transformer):
            up = layer.lora_B[network.ADAPTER_NAME].weight
            up.copy_(torch.randn(up.shape, generator=gen) * up_std)


def set_strength(transformer: torch.nn.Module, strength: float) -> None:
    """Scale the peft adapter to strength * alpha / rank: the model with base + strength * delta weights."""
    for _, layer in network.lora_layers(transformer):
        layer.set_scale(network.ADAPTER_NAME, strength)


def make_inputs(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """2x2 latent patches (4 image tokens) and 8 text tokens, batch 2."""
    gen = torch.Generator().manual_seed(seed)
    image, text = 4, 8
    img_ids = torch.zeros(image, 3)
    img_ids[:, 1] = torch.arange(image) // 2
    img_ids[:, 2] = torch.arange(image) % 2
    return {
        "hidden_states": torch.randn(2, image, config.in_channels, generator=gen),
        "encoder_hidden_states": torch.randn(2, text, config.joint_attention_dim, generator=gen),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim, generator=gen),
        "timestep": torch.tensor([0.3, 0.8]),
        "guidance": torch.tensor([1.0, 3.5]),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(text, 3),
    }


@torch.no_grad()
def forward(model: FluxTransformer2DModel) -> torch.Tensor:
    return model(**make_inputs(model.config), return_dict=False)[0]


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    assert diff <= TOLERANCE * scale, f"max abs diff {diff:.3g} vs output scale {scale:.3g}"


def assert_changes(trained: torch.Tensor, base: torch.Tensor) -> None:
    """The LoRA moves the output far beyond the tolerance (else every comparison would pass trivially)."""
    assert (trained - base).abs().max().item() > CHANGE * base.abs().max().item()


@contextmanager
def diffusers_warnings() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors diffusers logs meanwhile (its logger does not propagate, so caplog misses them):
    unexpected or missing LoRA keys, keys the Kohya converter leaves unused, modules of absent blocks."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("diffusers")
    handler, level = Keep(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.WARNING) if level else logging.WARNING)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def adapted_paths(model: torch.nn.Module, adapter: str) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


# ---- FLUX.1's real widths: diffusers' Kohya reader and the merge ----


@dataclass(frozen=True)
class RealWidthRun:
    base_weights: dict[str, torch.Tensor]  # the seeded base transformer's weights, shared, never modified
    targets: list[str]
    tensors: dict[str, torch.Tensor]
    path: Path
    base: torch.Tensor  # outputs: the base model, the peft model at strength 1 and 0.5
    trained: torch.Tensor
    half: torch.Tensor


def real_width_transformer(weights: dict[str, torch.Tensor]) -> FluxTransformer2DModel:
    """A fresh module tree holding the given weights (no copy: building 2 GB of seeded weights again costs
    ~15 s on a busy 2-core machine)."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(**REAL_WIDTH_CONFIG)  # type: ignore[arg-type]
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def real_width(tmp_path_factory) -> RealWidthRun:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**REAL_WIDTH_CONFIG).eval()  # type: ignore[arg-type]
    base_weights = dict(model.state_dict())
    base = forward(model)
    targets = flux_names.flux_lora_target_paths(model)
    # peft wraps the Linears and leaves their weights alone: they stay the base_weights tensors
    add_trained_lora(model, targets, up_std=1.0)
    trained = forward(model)
    set_strength(model, 0.5)
    half = forward(model)
    set_strength(model, 1.0)
    tensors = flux_names.kohya_flux_state_dict(model, network_alpha=ALPHA, save_dtype=torch.float32)
    path = tmp_path_factory.mktemp("flux-reload") / "real-width.safetensors"
    save_file(tensors, str(path))
    return RealWidthRun(base_weights, targets, tensors, path, base, trained, half)


@dataclass(frozen=True)
class Reloaded:
    warnings: list[str]
    adapted: set[str]
    full: torch.Tensor
    half: torch.Tensor


@pytest.fixture(scope="module")
def diffusers_reload(real_width) -> Reloaded:
    """The file loaded the way a diffusers user (or our preview) loads it: FluxPipeline.load_lora_weights on
    a fresh transformer, then set_adapters(..., 0.5)."""
    transformer = real_width_transformer(real_width.base_weights)
    pipe = FluxPipeline(
        scheduler=None,  # type: ignore[arg-type]
        vae=None,  # type: ignore[arg-type]
        text_encoder=None,  # type: ignore[arg-type]
        tokenizer=None,  # type: ignore[arg-type]
        text_encoder_2=None,  # type: ignore[arg-type]
        tokenizer_2=None,  # type: ignore[arg-type]
        transformer=transformer,
    )
    with diffusers_warnings() as records:
        pipe.load_lora_weights(str(real_width.path), adapter_name=RELOADED)
        full = forward(transformer)
        pipe.set_adapters(RELOADED, 0.5)
        half = forward(transformer)
    return Reloaded([r.getMessage() for r in records], adapted_paths(transformer, RELOADED), full, half)


def test_real_width_file_is_sd_scripts_shaped(real_width):
    names = [f"lora_unet_double_blocks_0_{s}" for s in ("img_attn_qkv", "txt_attn_qkv")] + [
        "lora_unet_single_blocks_0_linear1"
    ]
    assert set(names) <= {k.split(".")[0] for k in real_width.tensors}
    assert real_width.tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (
        3 * 3072 + 12288,
        4 * RANK,
    )
    assert real_width.tensors["lora_unet_single_blocks_0_linear1.alpha"].item() == 4 * ALPHA
    assert_changes(real_width.trained, real_width.base)


def test_diffusers_loads_every_module_with_no_warning(real_width, diffusers_reload):
    # The one warning: the pipeline has no CLIP-L here and the file no lora_te1_ keys, and diffusers says so.
    assert not [k for k in real_width.tensors if k.startswith("lora_te")]
    assert [w for w in diffusers_reload.warnings if not w.startswith(NO_TEXT_ENCODER_KEYS)] == []
    # every Linear the engine trained has the reloaded adapter, and nothing else has one
    assert diffusers_reload.adapted == set(real_width.targets)


def test_diffusers_reload_gives_the_trained_outputs(real_width, diffusers_reload):
    assert_close(diffusers_reload.full, real_width.trained)


def test_diffusers_half_strength_is_base_plus_half_the_delta(real_width, diffusers_reload):
    """set_adapters(..., 0.5) scales each weight delta by 0.5 (the peft model at strength 0.5); the output
    itself is not halfway between base and trained, the network being non-linear."""
    assert_close(diffusers_reload.half, real_width.half)
    assert_changes(diffusers_reload.half, real_width.base)
    assert_changes(diffusers_reload.half, real_width.trained)


def test_merge_at_real_width_equals_diffusers_reload(real_width, diffusers_reload):
    transformer = real_width_transformer({k: v.clone() for k, v in real_width.base_weights.items()})
    applied = apply_kohya_flux_lora(transformer, real_width.tensors)
    assert applied == list(dict.fromkeys(k.split(".")[0] for k in real_width.tensors))
    assert_close(forward(transformer), diffusers_reload.full)
    apply_kohya_flux_lora(transformer, real_width.tensors, weight=-0.5)  # back to base + 0.5 * delta
    assert_close(forward(transformer), diffusers_reload.half)


# ---- the merge at tiny widths: any weight, and refusals ----


@pytest.fixture(scope="module")
def tiny_base() -> FluxTransformer2DModel:
    return build_tiny_flux_transformer()


@pytest.fixture(scope="module")
def tiny_trained(tiny_base) -> FluxTransformer2DModel:
    model = copy.deepcopy(tiny_base)
    add_trained_lora(model, flux_names.flux_lora_target_paths(model))
    return model


@pytest.fixture(scope="module")
def tiny_tensors(tiny_trained) -> dict[str, torch.Tensor]:
    return flux_names.kohya_flux_state_dict(tiny_trained, network_alpha=ALPHA, save_dtype=torch.float32)


@pytest.mark.parametrize("weight", [1.0, 0.5, -1.0])
def test_merge_gives_the_peft_models_outputs_at_any_weight(tiny_base, tiny_trained, tiny_tensors, weight):
    set_strength(tiny_trained, weight)
    try:
        expected = forward(tiny_trained)
    finally:
        set_strength(tiny_trained, 1.0)
    assert_changes(expected, forward(tiny_base))
    model = copy.deepcopy(tiny_base)
    applied = apply_kohya_flux_lora(model, tiny_tensors, weight=weight)
    assert applied == flux_names.kohya_flux_module_names(tiny_trained)
    assert_close(forward(model), expected)


def test_merge_of_partial_modules_and_embedders(tiny_base):
    """Parts without LoRA (zero blocks of a fused module) and sd-scripts' in_dims embedders."""
    trained = copy.deepcopy(tiny_base)
    add_trained_lora(
        trained,
        [
            "transformer_blocks.0.attn.to_k",
            "single_transformer_blocks.1.proj_mlp",
            "x_embedder",
            "context_embedder",
            "time_text_embed.guidance_embedder.linear_1",
        ],
    )
    tensors = flux_names.kohya_flux_state_dict(trained, network_alpha=ALPHA, save_dtype=torch.float32)
    assert "lora_unet_img_in.alpha" in tensors
    assert_close(forward(merged_copy(tiny_base, tensors)), forward(trained))


def test_merge_into_a_peft_wrapped_transformer_goes_into_the_base_weights(tiny_base, tiny_tensors):
    wrapped = copy.deepcopy(tiny_base)
    add_trained_lora(wrapped, ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out"])
    set_strength(wrapped, 0.0)  # its own adapter off: what is left is the base plus the merged file
    apply_kohya_flux_lora(wrapped, tiny_tensors)
    assert_close(forward(wrapped), forward(merged_copy(tiny_base, tiny_tensors)))


def _without(tensors: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k != key}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a block this transformer lacks (diffusers only warns about it)
        (
            lambda t: {
                **t,
                "lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": torch.zeros(RANK, 32),
            },
            "lora_unet_double_blocks_7_img_attn_proj: no module",
        ),
        # BFL's final layer: diffusers would swap shift/scale; sd-scripts never trains it
        (
            lambda t: {**t, "lora_unet_final_layer_linear.alpha": torch.tensor(1.0)},
            "lora_unet_final_layer_linear: no module",
        ),
        (
            lambda t: {**t, "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)},
            "lora_te1_text_model_encoder_layers_0_mlp_fc1: a text encoder module",
        ),
        (
            lambda t: {**t, "lora_unet_single_blocks_0_linear2.dora_scale": torch.ones(1, 32)},
            r"lora_unet_single_blocks_0_linear2\.dora_scale: not a plain LoRA key",
        ),
        # diffusers and ComfyUI would take alpha = rank here
        (
            lambda t: _without(t, "lora_unet_single_blocks_1_linear1.alpha"),
            r"lora_unet_single_blocks_1_linear1\.alpha is missing",
        ),
        (
            lambda t: _without(t, "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight"),
            r"lora_unet_double_blocks_0_img_mlp_0\.lora_up\.weight is missing",
        ),
        (
            lambda t: {
                **t,
                "lora_unet_double_blocks_1_txt_attn_qkv.lora_up.weight": torch.zeros(64, 3 * RANK),
            },
            "lora_unet_double_blocks_1_txt_attn_qkv: down .* do not fit",
        ),
    ],
    ids=["absent-block", "final-layer", "text-encoder", "dora", "no-alpha", "no-up", "wrong-shape"],
)
def test_merge_refuses_what_it_cannot_place_and_changes_nothing(tiny_base, tiny_tensors, change, message):
    model = copy.deepcopy(tiny_base)
    with pytest.raises(ValueError, match=message):
        apply_kohya_flux_lora(model, change(dict(tiny_tensors)))
    before, after = tiny_base.state_dict(), model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
