"""What the engine asks of a model family: one small interface, one module per family.

The engine (worker/training/engine.py) owns the loop, gradient accumulation, checkpoints and resume, hooks,
cancel and when files are saved; everything that differs between families (how the components load, how
captions become conditioning, what is cached, how noise, timesteps and the target are drawn, which modules
get LoRA, the file's key names and metadata, the pipeline that draws samples) sits behind FamilyModel. A new
family is one module implementing it plus one line in worker/training/families/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator

from shared.config.spec import TrainingConfig
from worker.training import data

# Frozen base weights are kept in the training's compute dtype (as Kohya does); LoRA weights stay float32.
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class NetworkParams:
    """The trainable parameters add_network created, split as the optimizer's two learning rates split
    them (Kohya's unet_lr for the denoiser, text_encoder_lr for the encoders), and the frozen weights'
    dtype."""

    denoiser: list[torch.nn.Parameter]
    text_encoder: list[torch.nn.Parameter]
    weight_dtype: torch.dtype


class LossFn(Protocol):
    """One micro-batch's loss; `generator` is the run's noise generator (saved in the resume state)."""

    generator: torch.Generator

    def __call__(self, batch: data.Batch) -> torch.Tensor: ...


class FamilyModel(Protocol):
    """A loaded base model of one family, for one run."""

    family: str
    pipeline: Any  # the diffusers pipeline: samples, previews and TrainResult use it
    v_parameterization: bool  # SD2-v and friends; False for families without the choice
    lycoris: torch.nn.Module | None  # a LyCORIS network hooked into the models, when one is trained

    def add_network(self, config: TrainingConfig, seed: int, device: torch.device) -> NetworkParams:
        """Freeze the base, add the LoRA (or LyCORIS) modules, place the models on the device."""
        ...

    def load_network_weights(self, path: Path, config: TrainingConfig) -> None:
        """Start the network added by add_network from a LoRA file (config.network_weights), which must
        have exactly its modules, shapes and alphas (worker/training/network_weights.py)."""
        ...

    def prepare_batches(
        self,
        table: data.SampleTable,
        dataset_dir: Path,
        config: TrainingConfig,
        seed: int,
        accelerator: Accelerator,
        image_sizes: Mapping[str, tuple[int, int]],
        cache_dir: Path,
    ) -> Any:
        """Cache what does not change during the run (latents, frozen text-encoder outputs)."""
        ...

    def loss_fn(
        self,
        batches: Any,
        accelerator: Accelerator,
        weight_dtype: torch.dtype,
        seed: int,
        config: TrainingConfig,
    ) -> LossFn: ...

    def trainable_models(self) -> dict[str, torch.nn.Module | None]:
        """The models whose trainable parameters a resume state holds, by a stable name."""
        ...

    def set_train(self, training: bool, *, train_text_encoder: bool) -> None: ...

    def metadata(self, config: TrainingConfig) -> dict[str, str]:
        """The family's own ss_* / modelspec.* fields, laid over the run's common metadata."""
        ...

    def save(self, path: Path, config: TrainingConfig, metadata: dict[str, str]) -> None:
        """Write the trained network as the family's most used trainer names it."""
        ...

    def sample(
        self,
        config: TrainingConfig,
        out_dir: Path,
        accelerator: Accelerator,
        seed: int,
        *,
        epoch: int,
        step: int,
        by_epoch: bool,
        on_sample: Callable[[Any], None],
    ) -> None:
        """Draw the config's sample prompts from the in-memory model into out_dir/sample."""
        ...
