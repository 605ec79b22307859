"""FLUX.1 as users download it: BFL's transformer file plus the companion files in ComfyUI's layout.

- the transformer: ``flux1-dev.safetensors`` / ``flux1-schnell.safetensors`` in BFL's key layout, bare or
  under ComfyUI's ``model.diffusion_model.``; bf16, fp16, fp32 or fp8 (``float8_e4m3fn``/``e5m2``) weights,
  upcast to ``dtype`` on load. dev vs schnell from the keys (dev has ``guidance_in``), which also sets
  ``guidance_embeds`` whatever a config folder says. Scaled-fp8, bitsandbytes and GGUF files are refused.
- the companions, each the first match of its file names (in order) in the first folder that has one:
  the model file's own folder, then the models folder's ComfyUI folders (``vae/``; ``text_encoders/`` then
  ``clip/``):

  ============  ========================================================================================
  VAE           ``ae.safetensors``, ``ae*.safetensors``, ``flux*vae*.safetensors`` (BFL's original layout)
  CLIP-L        ``clip_l.safetensors``, ``clip_l*.safetensors`` (transformers keys, ``text_model.`` or not)
  T5-XXL        ``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``, ``t5xxl*.safetensors``
  ============  ========================================================================================

- configs: each of ``transformer/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``scheduler/``
  (diffusers' layout, configs only) from the first config folder that has it: ``<stem>.config/`` beside the
  file, ``<stem>.config/`` at the top of the models folder, the models folder's ``configs/flux1/``; else the
  architecture configs shipped for the detected variant (base_configs/flux1-dev, flux1-schnell). A
  scheduler in the shared ``configs/flux1/`` serves dev and schnell alike: leave it out to get each
  variant's own.
- tokenizers (``tokenizer/`` CLIP, ``tokenizer_2/`` T5, as diffusers lays them): from those config folders
  likewise, else from the Hugging Face cache (a FLUX.1 repo snapshot; CLIP's also from
  openai/clip-vit-large-patch14), downloaded into it (from FLUX.1-schnell) only with
  ``resolved.allow_download``.

Chroma (``Chroma1-HD.safetensors``, ``chroma-unlocked-v50.safetensors``) loads the same way as the family
:data:`CHROMA` describes: the same VAE and T5-XXL companions and no CLIP-L, configs from ``configs/chroma/``
or the shipped ``base_configs/chroma1-hd`` (diffusers' ChromaPipeline layout: ``text_encoder/`` and
``tokenizer/`` are T5's), the T5 tokenizer from a FLUX.1 snapshot's ``tokenizer_2/`` or Chroma1-HD's
``tokenizer/``. A VAE file in diffusers' own layout (Chroma's repo ships ``vae/diffusion_pytorch_model``,
which users save as ``ae.safetensors``) is read as it is.

Every failure is a BaseModelError saying what to put where, paths relative to the models folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from shared.catalogue.chroma import is_chroma_keys
from shared.catalogue.families import config_candidates, describe_checkpoint, safetensors_shapes
from shared.catalogue.flux import flux_variant_from_keys
from worker.training import single_file_configs as sfc
from worker.training.flux_bfl_keys import bfl_to_diffusers
from worker.training.model_loading import BaseModelError, ResolvedModel, shown

SHIPPED = {
    "dev": sfc.BASE_CONFIGS / "flux1-dev",
    "schnell": sfc.BASE_CONFIGS / "flux1-schnell",
    "chroma": sfc.BASE_CONFIGS / "chroma1-hd",
}
COMFYUI_PREFIX = "model.diffusion_model."
# Keys of quantized formats whose weights are not plain tensors: loading them as such would be garbage.
_QUANTIZED = (
    "scaled_fp8",
    ".scale_weight",
    ".weight_scale",
    ".comfy_quant",
    ".absmax",
    ".quant_state",
    ".quant_map",
)
_FLUX_CONFIG_FILES = {
    "transformer": "transformer/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
# schnell's repo is not gated, so it is the one downloaded from; the same files are read from dev's snapshot.
FLUX_TOKENIZERS = (
    sfc.TokenizerSource(
        "tokenizer",
        "black-forest-labs/FLUX.1-schnell",
        "tokenizer",
        also=(("black-forest-labs/FLUX.1-dev", "tokenizer"), ("openai/clip-vit-large-patch14", "")),
    ),
    sfc.TokenizerSource(
        "tokenizer_2",
        "black-forest-labs/FLUX.1-schnell",
        "tokenizer_2",
        also=(("black-forest-labs/FLUX.1-dev", "tokenizer_2"),),
    ),
)
# Chroma's T5 tokenizer is FLUX.1's (T5 v1.1 XXL): a FLUX.1 snapshot serves, or Chroma1-HD's own folder.
CHROMA_TOKENIZERS = (
    sfc.TokenizerSource(
        "tokenizer",
        "black-forest-labs/FLUX.1-schnell",
        "tokenizer_2",
        also=(("black-forest-labs/FLUX.1-dev", "tokenizer_2"), ("lodestones/Chroma1-HD", "tokenizer")),
    ),
)


@dataclass(frozen=True)
class Companion:
    role: str
    names: tuple[str, ...]  # glob patterns, first match wins
    folders: tuple[str, ...]  # ComfyUI's folders under the models folder
    source: str  # where users get it


_VAE = Companion(
    "the FLUX.1 VAE",
    ("ae.safetensors", "ae*.safetensors", "flux*vae*.safetensors"),
    ("vae",),
    "black-forest-labs/FLUX.1-schnell (ae.safetensors)",
)
_CLIP_L = Companion(
    "the CLIP-L text encoder",
    ("clip_l.safetensors", "clip_l*.safetensors"),
    ("text_encoders", "clip"),
    "comfyanonymous/flux_text_encoders (clip_l.safetensors)",
)
_T5XXL = Companion(
    "the T5-XXL text encoder",
    ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl*.safetensors"),
    ("text_encoders", "clip"),
    "comfyanonymous/flux_text_encoders (t5xxl_fp16.safetensors, or t5xxl_fp8_e4m3fn.safetensors)",
)
COMPANIONS = {"vae": _VAE, "text_encoder": _CLIP_L, "text_encoder_2": _T5XXL}


@dataclass(frozen=True)
class BflFamily:
    """A family whose single file is a BFL-layout transformer with companions: what it needs, by the
    pipeline component names of its diffusers layout."""

    family: str  # shared.model_families name
    label: str
    what: str  # what a trainable file is, for "is not ..."
    companions: Mapping[str, Companion]  # pipeline component -> companion
    t5: str  # the component that is T5-XXL
    config_files: Mapping[str, str]
    tokenizers: tuple[sfc.TokenizerSource, ...]
    shared_config: Path  # the models folder's shared config folder

    def variant(self, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
        """The SHIPPED key of the file's architecture, None when it is none of this family's."""
        if self.family == "chroma":
            return "chroma" if is_chroma_keys(shapes) else None
        return flux_variant_from_keys(shapes)


FLUX1 = BflFamily(
    "flux1",
    "FLUX.1",
    "a FLUX.1 dev or schnell transformer",
    COMPANIONS,
    "text_encoder_2",
    _FLUX_CONFIG_FILES,
    FLUX_TOKENIZERS,
    Path("configs") / "flux1",
)
CHROMA = BflFamily(
    "chroma",
    "Chroma",
    "a Chroma text-to-image transformer",
    {"vae": _VAE, "text_encoder": _T5XXL},
    "text_encoder",
    {k: v for k, v in _FLUX_CONFIG_FILES.items() if k != "text_encoder_2"},  # text_encoder/ is T5's
    CHROMA_TOKENIZERS,
    Path("configs") / "chroma",
)
BFL_FAMILIES = {f.family: f for f in (FLUX1, CHROMA)}


@dataclass(frozen=True)
class FluxFiles:
    """What a FLUX.1 (or Chroma) single file loads from, found without reading any tensor data."""

    family: BflFamily
    variant: str  # dev / schnell / chroma: the SHIPPED configs that fit its weights
    prefix: str  # of the transformer keys: "" (BFL) or COMFYUI_PREFIX
    weights: Mapping[str, Path]  # transformer and the family's companions -> file
    configs: Mapping[str, Path]  # config_files key -> config file
    tokenizers: Mapping[str, Path]  # tokenizer / tokenizer_2 -> folder


# --- finding the files --------------------------------------------------------------------------------------


def _where(folder: Path, resolved: ResolvedModel) -> str:
    return (
        "the models folder's top"
        if folder == resolved.models_dir
        else f"{shown(folder, resolved.models_dir)}/"
    )


def companion_folders(resolved: ResolvedModel, companion: Companion) -> list[Path]:
    """Where ``companion`` is looked for, in order: beside the model file, then ComfyUI's folders."""
    return list(dict.fromkeys([resolved.path.parent, *(resolved.models_dir / f for f in companion.folders)]))


def find_companion(resolved: ResolvedModel, companion: Companion) -> Path | None:
    for folder in companion_folders(resolved, companion):
        for pattern in companion.names:
            found = sorted(p for p in folder.glob(pattern) if p.is_file() and p != resolved.path)
            if found:
                return found[0]
    return None


def _missing_message(resolved: ResolvedModel, family: BflFamily, missing: list[Companion]) -> str:
    name = resolved.path.name
    parts = [
        f"{c.role}: put {c.names[0]} (from {c.source}) beside {name} or in {c.folders[0]}/ of the models "
        f"folder (looked for {', '.join(c.names)} in "
        f"{', '.join(_where(f, resolved) for f in companion_folders(resolved, c))})"
        for c in missing
    ]
    return f"{name} is a {family.label} transformer without its companion files; missing " + "; ".join(parts)


def config_folders(resolved: ResolvedModel, family: BflFamily = FLUX1) -> list[Path]:
    """The config folders that exist, in the order they are read."""
    candidates = [
        *config_candidates(resolved.path, resolved.models_dir, family.family),  # type: ignore[arg-type]
        resolved.models_dir / family.shared_config,
    ]
    return [c for c in dict.fromkeys(candidates) if c.is_dir()]


def _first(folders: list[Path], rel: str) -> Path | None:
    return next((f / rel for f in folders if (f / rel).exists()), None)


def _tokenizer_folders(resolved: ResolvedModel, family: BflFamily, folders: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing = []
    for source in family.tokenizers:
        local = _first(folders, f"{source.folder}/tokenizer_config.json")
        if local is not None:
            found[source.folder] = local.parent
            continue
        files = sfc.cached_tokenizer_files(source, resolved.cache_dir)
        if files is None and resolved.allow_download:
            try:
                files = sfc.download_tokenizer_files(source, resolved.cache_dir)
            except sfc.SingleFileConfigError as exc:
                raise BaseModelError(resolved.ref, f"{family.label} tokenizers: {exc}") from exc
        if files is None:
            missing.append(source)
        else:
            found[source.folder] = files["tokenizer_config.json"].parent  # one snapshot folder holds them all
    if missing:
        folders = " and ".join(f"{s.folder}/" for s in missing)
        include = " ".join(f"'{s.subfolder}/*'" for s in missing)
        configs = f"{shown(resolved.models_dir / family.shared_config, resolved.models_dir)}/"
        raise BaseModelError(
            resolved.ref,
            f"{family.label} needs its tokenizer files ({folders} as a {family.label} diffusers repo lays "
            f"them out), which are neither in {configs} of the models folder nor in the worker's Hugging "
            "Face cache (HF_HOME), and model downloads are disabled. Either run "
            f"`hf download {family.tokenizers[0].repo_id} --include {include}` on the worker (same HF_HOME), "
            f"or copy those folders into {configs}, or set LORABAKE_ALLOW_MODEL_DOWNLOADS=true",
        )
    return found


def locate_flux_single_file(resolved: ResolvedModel, family: str = "flux1") -> FluxFiles:
    """Check that a FLUX.1 (or, with ``family`` "chroma", a Chroma) single file can be loaded (its header,
    companions, configs, tokenizers), reading no tensor data: a job can fail on this before it does any
    work."""
    spec = BFL_FAMILIES[family]
    if resolved.kind != "single_file" or resolved.path.suffix.lower() != ".safetensors":
        raise BaseModelError(
            resolved.ref, f"{resolved.path.name}: {spec.label} single files are read as .safetensors"
        )
    shapes = _header(resolved, resolved.path)
    variant = spec.variant(shapes)
    if variant is None:
        raise BaseModelError(
            resolved.ref,
            f"{resolved.path.name} is not {spec.what} in BFL's layout: it looks like "
            f"{describe_checkpoint(shapes)}",
        )
    _refuse_quantized(resolved, resolved.path, shapes)
    weights = {"transformer": resolved.path}
    missing = []
    for name, companion in spec.companions.items():
        found = find_companion(resolved, companion)
        if found is None:
            missing.append(companion)
        else:
            weights[name] = found
    if missing:
        raise BaseModelError(resolved.ref, _missing_message(resolved, spec, missing))
    folders = config_folders(resolved, spec)
    configs = {n: _first(folders, rel) or SHIPPED[variant] / rel for n, rel in spec.config_files.items()}
    prefix = COMFYUI_PREFIX if COMFYUI_PREFIX + "img_in.weight" in shapes else ""
    return FluxFiles(spec, variant, prefix, weights, configs, _tokenizer_folders(resolved, spec, folders))


# --- reading weights ----------------------------------------------------------------------------------------


def _header(resolved: ResolvedModel, path: Path) -> dict[str, tuple[int, ...]]:
    try:
        return safetensors_shapes(path)
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to read {shown(path, resolved.models_dir)}: {exc}"
        ) from exc


def _refuse_quantized(resolved: ResolvedModel, path: Path, keys: Mapping[str, Any]) -> None:
    marker = next((k for k in keys if k.endswith(_QUANTIZED)), None)
    if marker is not None:
        raise BaseModelError(
            resolved.ref,
            f"{shown(path, resolved.models_dir)} holds quantized weights ({marker!r}: scaled fp8, "
            "bitsandbytes or similar), which lorabake does not read; use the bf16/fp16 file or a plain fp8 "
            "(e4m3fn) one",
        )


def _read(
    resolved: ResolvedModel, path: Path, dtype: torch.dtype, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The file's tensors under ``prefix`` (stripped), floating ones (fp8 included) cast to ``dtype`` one at a
    time, so a multi-GB file never sits in memory twice."""
    _refuse_quantized(resolved, path, _header(resolved, path))
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no mapping)
                if key.startswith(prefix):
                    tensor = f.get_tensor(key)
                    out[key[len(prefix) :]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise BaseModelError(
            resolved.ref, f"failed to read {shown(path, resolved.models_dir)}: {type(exc).__name__}: {exc}"
        ) from exc
    return out


def _assign(
    resolved: ResolvedModel, model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path
) -> None:
    """Put ``state`` into an empty (meta) ``model``, refusing a file of another architecture by name."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = ", ".join(
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
            if keys
        )
        raise BaseModelError(
            resolved.ref,
            f"{shown(path, resolved.models_dir)} does not fit {type(model).__name__}'s config: {detail}",
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()


# --- the components -----------------------------------------------------------------------------------------


def _transformer(resolved: ResolvedModel, files: FluxFiles, dtype: torch.dtype) -> torch.nn.Module:
    model_class = ChromaTransformer2DModel if files.family is CHROMA else FluxTransformer2DModel
    config = dict(model_class.load_config(files.configs["transformer"]))
    if files.family is FLUX1:
        config["guidance_embeds"] = files.variant == "dev"  # the weights decide; a shared config serves both
    with init_empty_weights():
        model = model_class.from_config(config)
    path = files.weights["transformer"]
    bfl = _read(resolved, path, dtype, files.prefix)
    try:
        state = bfl_to_diffusers(bfl, model.config)
    except KeyError as exc:
        raise BaseModelError(
            resolved.ref,
            f"{shown(path, resolved.models_dir)} lacks {exc.args[0]!r} for its transformer config",
        ) from exc
    state.update(bfl)  # what the map did not take: reported as unexpected by _assign
    _assign(resolved, model, state, path)
    return model


def _vae(resolved: ResolvedModel, files: FluxFiles, dtype: torch.dtype) -> AutoencoderKL:
    config = AutoencoderKL.load_config(files.configs["vae"])
    with init_empty_weights():
        model = AutoencoderKL.from_config(config)
    path = files.weights["vae"]
    state = _read(resolved, path, dtype)
    if not any(k.startswith("encoder.down_blocks.") for k in state):  # BFL's original keys, not diffusers'
        state = convert_ldm_vae_checkpoint(state, config)
    _assign(resolved, model, state, path)
    return model


def _clip(resolved: ResolvedModel, files: FluxFiles, dtype: torch.dtype) -> CLIPTextModel:
    with init_empty_weights():
        model = CLIPTextModel(CLIPTextConfig.from_pretrained(files.configs["text_encoder"].parent))
    path = files.weights["text_encoder"]
    wants_prefix = any(k.startswith("text_model.") for k in model.state_dict())  # transformers < 5.6
    state = {}
    for key, tensor in _read(resolved, path, dtype).items():
        bare = key.removeprefix("text_model.")
        if bare in ("text_projection.weight", "logit_scale", "embeddings.position_ids"):
            continue  # ComfyUI's CLIP-L keeps its projection; FLUX reads the unprojected pooled output
        state[f"text_model.{bare}" if wants_prefix else bare] = tensor
    _assign(resolved, model, state, path)
    return model


def _t5(resolved: ResolvedModel, files: FluxFiles, dtype: torch.dtype) -> T5EncoderModel:
    component = files.family.t5
    with init_empty_weights():
        model = T5EncoderModel(T5Config.from_pretrained(files.configs[component].parent))
    path = files.weights[component]
    state = _read(resolved, path, dtype)
    # One embedding under two names: ComfyUI saves it once, as shared.weight; T5EncoderModel lists the same
    # parameter as encoder.embed_tokens.weight too (transformers 5.23 ties them whatever the config says).
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if embedding is not None:
        state.setdefault("shared.weight", embedding)
        state.setdefault("encoder.embed_tokens.weight", embedding)
    _assign(resolved, model, state, path)
    return model


def load_flux_single_file(resolved: ResolvedModel, *, dtype: torch.dtype = torch.float32) -> FluxPipeline:
    """A FluxPipeline from a FLUX.1 single file and its companions (see the module docstring), weights in
    ``dtype``, offline. Raises BaseModelError naming the file and what to do."""
    files = locate_flux_single_file(resolved)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(files.tokenizers["tokenizer"], local_files_only=True)
        tokenizer_2 = T5TokenizerFast.from_pretrained(files.tokenizers["tokenizer_2"], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load the FLUX.1 tokenizers: {type(exc).__name__}"
        ) from exc
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(files.configs["scheduler"])
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=_vae(resolved, files, torch.float32),  # float32 as for every family: it runs once per image
        text_encoder=_clip(resolved, files, dtype),
        tokenizer=tokenizer,
        text_encoder_2=_t5(resolved, files, dtype),
        tokenizer_2=tokenizer_2,
        transformer=_transformer(resolved, files, dtype),
    )
    return pipe


def load_chroma_single_file(resolved: ResolvedModel, *, dtype: torch.dtype = torch.float32) -> ChromaPipeline:
    """A ChromaPipeline from a Chroma single file and its companions (ae + t5xxl, no CLIP), weights in
    ``dtype`` (the VAE in float32), offline. Raises BaseModelError naming the file and what to do."""
    files = locate_flux_single_file(resolved, "chroma")
    try:
        tokenizer = T5TokenizerFast.from_pretrained(files.tokenizers["tokenizer"], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load the Chroma tokenizer: {type(exc).__name__}"
        ) from exc
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(files.configs["scheduler"])
    )
    return ChromaPipeline(
        scheduler=scheduler,
        vae=_vae(resolved, files, torch.float32),
        text_encoder=_t5(resolved, files, dtype),
        tokenizer=tokenizer,
        transformer=_transformer(resolved, files, dtype),
    )
