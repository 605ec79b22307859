"""The training config a client submits, in Kohya's vocabulary.

Validated once at the API (unknown fields and impossible values are 422s naming the field) and read
unchanged by the worker and by ``lorabake train``. Pure pydantic: no torch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Optimizer = Literal["AdamW", "AdamW8bit", "Adafactor"]
LrScheduler = Literal[
    "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"
]
MixedPrecision = Literal["no", "fp16", "bf16"]
SavePrecision = Literal["fp16", "bf16", "float"]

# A1111 uses the file name as the LoRA's prompt name (<lora:NAME:1>): keep it a plain, portable file stem.
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Kohya folder tokens are words separated by spaces; no path separators may sneak in through them.
_TOKEN = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")


class TrainingConfig(BaseModel):
    """One LoRA training run. Field names follow Kohya's sd-scripts where one exists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_name: str = Field("lora", description="File stem: `{output_name}-{epoch:06d}.safetensors`.")
    base_model: str = Field(
        ...,
        min_length=1,
        description="A diffusers folder or single .safetensors/.ckpt in the models directory, or a hub id.",
    )
    resolution: int = Field(512, ge=64, le=2048, multiple_of=8, description="Training side length in pixels.")
    repeats: int = Field(
        1, ge=1, le=1000, description="Repeats for images not in a `N_trigger class` folder (flat layout)."
    )
    trigger_word: str | None = Field(None, description="Caption for uncaptioned images in a flat layout.")
    class_word: str | None = Field(None, description="Class appended to the trigger for uncaptioned images.")
    epochs: int = Field(10, ge=1, le=1000, description="Kohya's max_train_epochs.")
    batch_size: int = Field(1, ge=1, le=64, description="Kohya's train_batch_size.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=128)
    unet_lr: float = Field(1e-4, gt=0, le=1.0)
    text_encoder_lr: float = Field(
        5e-5, ge=0, le=1.0, description="0 trains the UNet only (the text encoder is not given a LoRA)."
    )
    network_dim: int = Field(32, ge=1, le=1024, description="LoRA rank.")
    network_alpha: float = Field(16.0, gt=0, le=1024, description="Scale is alpha / rank, as in Kohya.")
    optimizer: Optimizer = "AdamW"
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=100_000)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables gradient clipping.")
    mixed_precision: MixedPrecision = "bf16"
    save_precision: SavePrecision = "fp16"
    save_every_n_epochs: int | None = Field(
        1, ge=1, le=1000, description="Save a LoRA every N epochs; the last epoch is always saved."
    )
    gradient_checkpointing: bool = False
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="None picks one; the job records it.")

    @field_validator("output_name")
    @classmethod
    def _portable_name(cls, value: str) -> str:
        if not _OUTPUT_NAME.match(value):
            raise ValueError(
                "use letters, digits, '.', '_' or '-' (max 100), starting with a letter or digit"
            )
        return value

    @field_validator("trigger_word", "class_word")
    @classmethod
    def _plain_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        if not _TOKEN.match(value):
            raise ValueError("must be plain text without slashes or control characters")
        return value

    @model_validator(mode="after")
    def _warmup_needs_scheduler(self) -> TrainingConfig:
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs an lr_scheduler other than 'constant'")
        return self

    @property
    def trains_text_encoder(self) -> bool:
        return self.text_encoder_lr > 0
