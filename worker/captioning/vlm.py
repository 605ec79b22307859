"""What the three vision-language captioners share: finding and loading the model at the asked precision,
decoding settings, seeded generation, and turning the answer into a one-line caption.

Each model's own conventions (Florence-2's task tokens, Qwen's chat prompt, JoyCaption's templates) live in
florence2.py, qwen_vl.py and joycaption.py. Processors are built from their parts with PIL image processors
(``backend="pil"``): transformers 5 needs torchvision for its default ones, and the worker does not have it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.config.captioning import CaptionConfig
from worker.captioning import CaptionModelUnavailable, CaptionSetupError, resolve_caption_model

# Configs, tokenizers, chat templates and safetensors weights; not .bin/.pt copies of the same weights.
DOWNLOAD_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.safetensors")
SAMPLING_SEED = 42  # as BLIP's sampling (Kohya's seed), per batch: 42, 43, ...
_SPACES = re.compile(r"\s+")


def find_model(kind: str, ref: str, models_dir: Path, **lookup: Any) -> tuple[Path, dict[str, Any]]:
    """The model folder and its config.json (CaptionModelUnavailable when either is missing)."""
    folder = resolve_caption_model(
        kind, ref, models_dir, required_files=("config.json",), download_patterns=DOWNLOAD_PATTERNS, **lookup
    )
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CaptionModelUnavailable(kind, ref, f"{folder}/config.json cannot be read: {exc}") from exc
    if "auto_map" in config:
        # Remote-code checkpoints keep their weights under other names: loaded by transformers' own class,
        # they would silently caption with random layers.
        raise CaptionModelUnavailable(
            kind,
            ref,
            f"{folder} is a remote-code checkpoint (config.json has auto_map); use a release in "
            "transformers' own format (docs/datasets.md names them)",
        )
    return folder, config


def resolve_device(device: str | torch.device | None) -> torch.device:
    return (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )


def weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The weights' dtype; refuses what the device cannot run, as the training does for mixed_precision."""
    cuda = device.type == "cuda"
    bf16_native = not cuda or torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        return (torch.bfloat16 if bf16_native else torch.float16) if cuda else torch.float32
    if precision == "fp16" and not cuda:
        raise CaptionSetupError("precision 'fp16' needs a CUDA GPU; on CPU use 'fp32' or 'bf16'", "precision")
    if precision == "bf16" and not bf16_native:
        raise CaptionSetupError(
            f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use 'fp16'",
            "precision",
        )
    if precision == "8bit":
        if not cuda:
            raise CaptionSetupError(
                "precision '8bit' needs a CUDA GPU (bitsandbytes); on CPU use 'fp32'", "precision"
            )
        # LLM.int8 computes in fp16 around the int8 weights (bitsandbytes' default)
        return torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_model(
    model_class: type,
    folder: Path,
    kind: str,
    ref: str,
    config: CaptionConfig,
    device: torch.device,
    skip_quantizing: Sequence[str] = (),
) -> Any:
    """``model_class.from_pretrained(folder)`` in eval mode on ``device`` at ``config.precision``.

    8-bit quantizes the language model only: ``skip_quantizing`` names the vision modules, which lose
    accuracy in int8 (JoyCaption's own loader skips its vision tower and projector for the same reason).
    """
    dtype = weight_dtype(config.precision, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if config.precision == "8bit":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise CaptionSetupError(
                "precision '8bit' needs bitsandbytes on the worker (pip install bitsandbytes)", "precision"
            ) from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=list(skip_quantizing)
        )
    if device.type == "cuda":
        # straight onto the GPU: a 7-8B model never sits whole in the worker's RAM first
        kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    try:
        model = model_class.from_pretrained(folder, **kwargs)
    except Exception as exc:
        raise CaptionModelUnavailable(
            kind, ref, f"failed to load {folder}: {type(exc).__name__}: {exc}"
        ) from exc
    return model.eval()


def load_processor(processor_class: type, folder: Path, kind: str, ref: str) -> Any:
    try:
        return processor_class.from_pretrained(folder, local_files_only=True, backend="pil")
    except Exception as exc:
        raise CaptionModelUnavailable(
            kind, ref, f"failed to load the processor of {folder}: {type(exc).__name__}: {exc}"
        ) from exc


def generation_kwargs(config: CaptionConfig, num_beams: int = 1) -> dict[str, Any]:
    """Greedy (or the model's beam search) unless ``do_sample``; the model's own generation_config keeps the
    rest (e.g. Qwen's repetition penalty)."""
    kwargs: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample}
    if config.do_sample:
        return {
            **kwargs,
            "num_beams": 1,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": None,
        }
    # a repo's sampling defaults (temperature, top_p, top_k) mean nothing without sampling
    return {**kwargs, "num_beams": num_beams, "temperature": None, "top_p": None, "top_k": None}


def seeded_generate(model: Any, inputs: dict[str, Any], kwargs: dict[str, Any], batch_index: int) -> Any:
    """``model.generate`` under a seed of its own, so sampled captions repeat run after run."""
    device = next(model.parameters()).device
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.inference_mode(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(SAMPLING_SEED + batch_index)
        return model.generate(**inputs, **kwargs)


def to_device(inputs: Any, model: Any) -> dict[str, Any]:
    """The processor's tensors on the model's device; floating ones (pixels) in the model's dtype."""
    device, dtype = next(model.parameters()).device, model.dtype
    moved = {}
    for name, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        moved[name] = value
    return moved


def one_line(text: str) -> str:
    """A caption file's first line is the caption the trainer reads: paragraphs become one line."""
    return _SPACES.sub(" ", text).strip()
