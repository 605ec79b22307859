"""Bodies of /v1/models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.catalogue.captioners import CAPTIONER_KIND
from shared.catalogue.families import ModelFamily
from shared.catalogue.records import CatalogueModel


class ModelOut(BaseModel):
    name: str = Field(description="what config.base_model takes")
    family: ModelFamily | None = Field(
        description="SD1.x (sd1), SD2.x (sd2), SDXL base (sdxl), FLUX.1 (flux1) or Chroma (chroma); null for "
        "a .ckpt, whose family is read when a job loads it"
    )
    prediction_type: str | None = Field(
        description="epsilon or v_prediction, from the model's scheduler config; null when unknown and for "
        "the flow-matching families (FLUX.1, Chroma)"
    )
    kind: Literal["diffusers", "single_file"]
    source: Literal["local", "hub_cache"] = Field(
        description="local: in the workers' models folder; hub_cache: a hub repo in their Hugging Face cache"
    )
    size_bytes: int
    last_seen_at: datetime = Field(description="when a worker last reported having it")
    workers_online: int = Field(description="workers alive now that have it (0: jobs wait for one)")


class CaptionerOut(BaseModel):
    name: str = Field(description="what the caption config's `<method>_model` field takes")
    method: Literal["blip", "wd14", "florence2", "qwen_vl", "joycaption"] = Field(
        description="the captioning method it serves"
    )
    source: Literal["local", "hub_cache"]
    size_bytes: int
    last_seen_at: datetime = Field(description="when a worker last reported having it")
    workers_online: int = Field(description="workers alive now that have it (0: jobs wait for one)")


class ModelList(BaseModel):
    items: list[ModelOut] = Field(description="base models (what config.base_model takes)")
    captioners: list[CaptionerOut] = Field(
        description="captioner models (what a caption config's `<method>_model` takes); a caption job or a "
        "training job's `captioning` naming one not listed here is refused unless downloads are allowed"
    )
    downloads_allowed: bool = Field(
        description="whether a hub repo id not listed here is accepted (workers download it)"
    )

    @staticmethod
    def of(models: list[CatalogueModel], downloads_allowed: bool) -> ModelList:
        return ModelList(
            items=[
                ModelOut(
                    **_reported(m),
                    family=m.family,  # type: ignore[arg-type]
                    prediction_type=m.prediction_type,
                    kind=m.kind,  # type: ignore[arg-type]
                )
                for m in models
                if m.kind != CAPTIONER_KIND
            ],
            captioners=[
                CaptionerOut(**_reported(m), method=m.captioner)  # type: ignore[arg-type]
                for m in models
                if m.kind == CAPTIONER_KIND
            ],
            downloads_allowed=downloads_allowed,
        )


def _reported(m: CatalogueModel) -> dict[str, Any]:
    """What a base model and a captioner both say."""
    return {
        "name": m.name,
        "source": m.source,
        "size_bytes": m.size_bytes,
        "last_seen_at": m.last_seen_at,
        "workers_online": len(m.workers),
    }
