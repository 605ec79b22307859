"""Which config fields mean something for which model family: a field that does nothing for the family is a
422 naming it, never silently ignored. One table, read by the config's own check (an explicit
model_family), the API (a family from the catalogue) and the worker (the detected family)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import LorabakeError
from shared.model_families import FAMILIES, FLOW_FAMILIES, TRAITS, traits

# Pixels every training side must be a multiple of: the VAE's factor 8, and for FLUX.1 its 2x2 packing of
# the latents on top (diffusers' FluxPipeline asks for multiples of vae_scale_factor * 2 as well); from the
# family table (shared/model_families.py), SD's 8 for an unknown family.
SD_SIZE_MULTIPLE = 8
SIZE_MULTIPLES: dict[str, int] = {
    f: TRAITS[f].size_multiple for f in FAMILIES if TRAITS[f].size_multiple != SD_SIZE_MULTIPLE
}

# Fields of the DDPM / CLIP-token families that a rectified-flow family cannot honour, and why.
NOT_FOR_FLOW: dict[str, str] = {
    "v_parameterization": "a flow-matching model predicts the velocity; there is no v/epsilon choice",
    "min_snr_gamma": "Min-SNR weighting is defined for DDPM noise schedules, not flow matching",
    "noise_offset": "offset noise is a DDPM-schedule remedy that sd-scripts does not apply to FLUX",
    "adaptive_noise_scale": "offset noise is a DDPM-schedule remedy that sd-scripts does not apply to FLUX",
    "clip_skip": "FLUX uses CLIP-L's pooled output only, so there is no layer to skip",
    "max_token_length": "FLUX captions are T5 tokens: use t5xxl_max_token_length",
    "conv_dim": "FLUX's transformer blocks have no 3x3 convolutions (LoCon)",
    "conv_alpha": "FLUX's transformer blocks have no 3x3 convolutions (LoCon)",
}
# The network options a flow family does not take (it trains plain LoRA on targets its own options choose).
FLOW_LORA_ONLY = "trains LoRA only for now (LoHa/LoKr/DoRA: SD families)"
FLOW_TARGETS = "targets are chosen by the block indices and patterns"
NETWORK_NOT_FOR_FLOW: dict[str, str] = {
    "network_type": FLOW_LORA_ONLY,
    "lokr_factor": FLOW_LORA_ONLY,
    "dora_wd": FLOW_LORA_ONLY,
    "network_target": FLOW_TARGETS,
}
# Fields only a flow-matching family reads.
FLOW_ONLY: tuple[str, ...] = (
    "guidance_scale",
    "timestep_sampling",
    "sigmoid_scale",
    "discrete_flow_shift",
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "model_prediction_type",
    "t5xxl_max_token_length",
    "apply_t5_attn_mask",
    "train_double_block_indices",
    "train_single_block_indices",
    "include_patterns",
    "exclude_patterns",
)


# What an unset field of a flow family trains with, in words (the worker's own defaults:
# worker/training/flow_matching.py TimestepSampling, worker/training/families/flux.py), as sd-scripts'
# docs/flux_train_network.md advises; GET /v1/presets lists them and the page shows them as placeholders.
FLOW_DEFAULTS: dict[str, str] = {
    "guidance_scale": "1.0",  # dev; schnell has no guidance embedding
    "timestep_sampling": "shift",
    "sigmoid_scale": "1.0",
    "discrete_flow_shift": "3.1582",
    "weighting_scheme": "none",
    "logit_mean": "0.0",
    "logit_std": "1.0",
    "mode_scale": "1.29",
    "model_prediction_type": "raw",
    "t5xxl_max_token_length": "512 (dev), 256 (schnell)",
    "apply_t5_attn_mask": "false",
    "network_train_unet_only": "true",
    "train_double_block_indices": "all",
    "train_single_block_indices": "all",
}
# A line added to a field's help on a flow family (the size fields get theirs from size_multiple).
FLOW_NOTES: dict[str, str] = {
    "sample_prompts": "FLUX.1: `--g N` sets the distilled guidance a sample is drawn with (3.5 unless given; "
    "schnell has none); --n and --l are not used.",
    "text_encoder_lr": "FLUX.1: used only with network_train_unet_only false (a CLIP-L LoRA; T5 stays "
    "frozen).",
}

# Chroma (FLUX.1-schnell derived, T5 only, no guidance embedding) as sd-scripts trains it with
# --model_type chroma: docs/flux_train_network.md's "Training Chroma Models" and its recommended
# `--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0`; flux_train_network.py
# asserts apply_t5_attn_mask; no schnell/dev split, so T5 reads 512 tokens (families/chroma.py).
CHROMA_DEFAULTS: dict[str, str] = {
    **FLOW_DEFAULTS,
    "guidance_scale": "0.0 (Chroma has no guidance embedding)",
    "timestep_sampling": "sigmoid",
    "t5xxl_max_token_length": "512",
    "apply_t5_attn_mask": "true (Chroma keeps one padding token unmasked)",
}
CHROMA_NOTES: dict[str, str] = {
    "sample_prompts": "Chroma: drawn with classifier-free guidance: --l sets its scale (4.0 unless given, as "
    "sd-scripts advises) and --n the negative prompt; --g is not used (no guidance embedding).",
    "text_encoder_lr": "Chroma: not used (it has no CLIP-L; T5 stays frozen).",
}
# Values a Chroma run cannot honour (field -> (the only accepted values, why)).
CHROMA_FIXED: dict[str, tuple[tuple[object, ...], str]] = {
    "guidance_scale": ((None, 0.0), "Chroma has no guidance embedding: leave it unset or 0"),
    "apply_t5_attn_mask": ((None, True), "Chroma trains with T5's attention mask (sd-scripts asserts it)"),
    "network_train_unet_only": ((None, True), "Chroma has no CLIP-L to train and T5 stays frozen"),
}
FAMILY_DEFAULTS: dict[str, dict[str, str]] = {"chroma": CHROMA_DEFAULTS}
FAMILY_NOTES: dict[str, dict[str, str]] = {"chroma": CHROMA_NOTES}


@dataclass(frozen=True)
class FamilyFields:
    """What a form needs to show only the fields that apply to a family."""

    label: str  # "FLUX.1"
    fields: tuple[str, ...]  # read by this family only, or defaulted differently for it: its own section
    not_applicable: dict[str, str]  # field -> why: setting one is a 422 naming config.<field>
    defaults: dict[str, str]  # what an unset field of `fields` trains with here, in words
    notes: dict[str, str]  # field -> a line for its help on this family
    size_multiple: int


def family_fields(family: str) -> FamilyFields:
    """The fields of `family` as a form shows them, from the same tables family_conflicts checks."""
    known = traits(family)
    label = known.label if known else family
    multiple = size_multiple(family)
    size_note = f"{label}: a multiple of {multiple} px"
    notes = {"resolution": size_note, "bucket_reso_steps": size_note} if multiple != SD_SIZE_MULTIPLE else {}
    if family in FLOW_FAMILIES:
        text = FLOW_ONLY.index("apply_t5_attn_mask") + 1  # the text-encoder options together
        return FamilyFields(
            label=label,
            fields=(*FLOW_ONLY[:text], "network_train_unet_only", *FLOW_ONLY[text:]),
            not_applicable={**NOT_FOR_FLOW, **NETWORK_NOT_FOR_FLOW},
            defaults=dict(FAMILY_DEFAULTS.get(family, FLOW_DEFAULTS)),
            notes={**notes, **FAMILY_NOTES.get(family, FLOW_NOTES)},
            size_multiple=multiple,
        )
    flow_only = f"applies to flow-matching families (FLUX.1, Chroma) only, not {family}"
    return FamilyFields(
        label=label,
        fields=(*NOT_FOR_FLOW, *NETWORK_NOT_FOR_FLOW),
        not_applicable=dict.fromkeys(FLOW_ONLY, flow_only),
        defaults={},
        notes=notes,
        size_multiple=multiple,
    )


def size_multiple(family: str | None) -> int:
    """The multiple of pixels a training image's sides (resolution, bucket steps) need for `family`."""
    return SIZE_MULTIPLES.get(family or "", SD_SIZE_MULTIPLE)


def size_conflicts(config: Any, family: str) -> list[tuple[str, str]]:
    """resolution / bucket_reso_steps that would make buckets the family's latents cannot hold. Buckets
    are multiples of bucket_reso_steps (or resolution x resolution without bucketing), so these two decide."""
    multiple = size_multiple(family)
    fields = ["resolution"] + (["bucket_reso_steps"] if config.enable_bucket else [])
    return [
        (field, f"must be a multiple of {multiple} px for {family} ({getattr(config, field)} is not)")
        for field in fields
        if getattr(config, field) % multiple
    ]


def family_conflicts(config: Any, family: str) -> list[tuple[str, str]]:
    """(field, why) for each field set in `config` that the family cannot use; empty when all apply."""
    set_fields = config.model_fields_set
    out: list[tuple[str, str]] = size_conflicts(config, family)
    if family in FLOW_FAMILIES:
        for field, why in NOT_FOR_FLOW.items():
            if field in set_fields and getattr(config, field) not in (None, False):
                out.append((field, f"does not apply to {family}: {why}"))
        if config.network_type != "lora" or config.dora_wd:
            out.append(("network_type", f"{family} {FLOW_LORA_ONLY}"))
        if config.network_target != "all_linear" and "network_target" in set_fields:
            out.append(("network_target", f"{family} {FLOW_TARGETS}"))
        if family == "chroma":
            for field, (accepted, why) in CHROMA_FIXED.items():
                if getattr(config, field) not in accepted:
                    out.append((field, f"is {getattr(config, field)!r}: {why}"))
        return out
    for field in FLOW_ONLY:
        if getattr(config, field, None) is not None:
            out.append((field, f"applies to flow-matching families (FLUX.1, Chroma) only, not {family}"))
    return out


def _refusal(message: str, fields: list[dict[str, str]], **details: Any) -> LorabakeError:
    return LorabakeError(
        message, code="invalid_config", details={"fields": fields, **details}, status_code=422
    )


def checked_family(config: Any, catalogue_family: str | None) -> str | None:
    """The family a job trains for: its explicit model_family, else the catalogue's for its base model (None
    when neither says; the worker checks once it has read the model). A 422 naming config.model_family when
    the two disagree, or config.<field> for each field the catalogue's family cannot use (an explicit
    family's fields are the config's own check)."""
    explicit = None if config.model_family == "auto" else config.model_family
    if explicit is not None and catalogue_family is not None and explicit != catalogue_family:
        why = (
            f"is {explicit} but {config.base_model!r} is a {catalogue_family} model (GET /v1/models); "
            "leave model_family at auto"
        )
        raise _refusal(
            f"config.model_family {why}",
            [{"field": "config.model_family", "message": why}],
            catalogue_family=catalogue_family,
        )
    if explicit is not None or catalogue_family is None:
        return explicit
    conflicts = family_conflicts(config, catalogue_family)
    if conflicts:
        fields = [{"field": f"config.{field}", "message": why} for field, why in conflicts]
        raise _refusal(
            f"{config.base_model!r} is a {catalogue_family} model: "
            + "; ".join(f"{f['field']} {f['message']}" for f in fields),
            fields,
            catalogue_family=catalogue_family,
        )
    return catalogue_family
