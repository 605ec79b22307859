"""What the three vision-language captioners share: finding and loading the model at the asked precision,
decoding settings, seeded generation, and turning the answer into a one-line caption (VlmCaptioner).

Each model's own conventions (Florence-2's task tokens, Qwen's chat prompt, JoyCaption's templates, which
model classes load it, what its processor needs) live in florence2.py, qwen_vl.py and joycaption.py.
Processors are built from their parts with PIL image processors (``backend="pil"``): transformers 5 needs
torchvision for its default ones, and the worker does not have it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from PIL import Image

from shared.catalogue.captioners import VLM_DOWNLOAD_PATTERNS as DOWNLOAD_PATTERNS
from shared.config.captioning import CaptionConfig
from worker.captioning import CaptionModelUnavailable, CaptionSetupError, resolve_caption_model
from worker.captioning.wd14 import flatten_on_white

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


class VlmCaptioner:
    """A loaded vision-language captioner. A subclass names its model (KIND, MODEL_FIELD, ARCHITECTURE,
    architectures()) and writes its prompts; it may adjust the processor (prepare_processor) and what the
    processor is called with (processor_kwargs)."""

    KIND: ClassVar[str]  # in messages: "Florence-2"
    MODEL_FIELD: ClassVar[str]  # the CaptionConfig field naming the model
    ARCHITECTURE: ClassVar[str]  # in the refusal of another model type: "... model, not Florence-2"
    SKIP_QUANTIZING: ClassVar[tuple[str, ...]] = ()  # vision modules kept out of 8-bit (load_model)
    NUM_BEAMS: ClassVar[int] = 1  # without sampling
    ENCODER_DECODER: ClassVar[bool] = False  # True: the output is the answer alone, no prompt to cut

    def __init__(self, model, processor, ref: str) -> None:  # noqa: ANN001
        self.model = model
        self.processor = processor
        self.ref = ref
        self._batches = 0

    @classmethod
    def architectures(cls) -> Mapping[str, tuple[type, type]]:
        """config.json's model_type -> (model class, processor class)."""
        raise NotImplementedError

    @classmethod
    def prepare_processor(cls, processor: Any, folder: Path, ref: str) -> None:
        """Checks and settings the model's processor needs before captioning (none by default)."""

    @classmethod
    def load(
        cls,
        config: CaptionConfig,
        models_dir: Path,
        *,
        allow_download: bool = False,
        cache_dir: Path | None = None,
        device: str | torch.device | None = None,
    ) -> Self:
        """Load from a folder in ``models_dir`` or the HF cache (``allow_download`` fetches a hub id into the
        cache first). Any failure is a CaptionModelUnavailable (a CaptionSetupError for the precision)."""
        ref = getattr(config, cls.MODEL_FIELD)
        folder, model_config = find_model(
            cls.KIND, ref, models_dir, allow_download=allow_download, cache_dir=cache_dir
        )
        classes = cls.architectures().get(model_config.get("model_type", ""))
        if classes is None:
            found = model_config.get("model_type")
            why = f"{folder} is a {found!r} model, not {cls.ARCHITECTURE}"
            raise CaptionModelUnavailable(cls.KIND, ref, why)
        model_class, processor_class = classes
        target = resolve_device(device)
        model = load_model(model_class, folder, cls.KIND, ref, config, target, cls.SKIP_QUANTIZING)
        processor = load_processor(processor_class, folder, cls.KIND, ref)
        cls.prepare_processor(processor, folder, ref)
        return cls(model, processor, ref)

    def prompts(self, config: CaptionConfig, count: int) -> list[str]:
        raise NotImplementedError

    def processor_kwargs(self, texts: list[str]) -> dict[str, Any]:
        """What the processor is called with besides the prompts, the images and return_tensors."""
        return {}

    def caption(self, images: Sequence[Image.Image], config: CaptionConfig) -> list[str]:
        if not images:
            return []
        texts = self.prompts(config, len(images))
        inputs = self.processor(
            text=texts,
            images=[flatten_on_white(image) for image in images],
            **self.processor_kwargs(texts),
            return_tensors="pt",
        )
        prompt_length = inputs["input_ids"].shape[1]
        decoding = generation_kwargs(config, self.NUM_BEAMS)
        out = seeded_generate(self.model, to_device(inputs, self.model), decoding, self._batches)
        self._batches += 1
        # a decoder-only model's output starts with the prompt it continued
        answers = self.processor.batch_decode(
            out if self.ENCODER_DECODER else out[:, prompt_length:], skip_special_tokens=True
        )
        return [one_line(text) for text in answers]

    def release(self) -> None:
        self.model = self.processor = None


def chat_processor(processor: Any, kind: str, ref: str, folder: Path, hint: str = "") -> None:
    """A chat model's processor: it must have a chat template; padding goes left, so batched generation
    continues every prompt at its end."""
    if processor.chat_template is None:
        raise CaptionModelUnavailable(kind, ref, f"{folder} has no chat template{hint}")
    processor.tokenizer.padding_side = "left"
