"""/v1/presets: the guide's advice as presets, each with the values it fills (config.preset applies one)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import Owner
from api.schemas import error_responses
from shared.config.family_options import family_fields
from shared.config.presets import FAMILY_VALUES, PRESETS, Preset, computed_fields
from shared.errors import NotFoundError
from shared.model_families import FAMILIES

router = APIRouter(prefix="/v1/presets", tags=["presets"])
_ERRORS = error_responses(401, 404, 422, 503)


class FamilyPresetOut(BaseModel):
    values: dict[str, Any] = Field(description="fields set to these values, unless the config sets them")
    computed: dict[str, str] = Field(description="fields filled from the dataset and the config, and how")


class PresetOut(BaseModel):
    name: str = Field(description="what config.preset takes")
    description: str
    values: dict[str, Any] = Field(description="fields set to these values, unless the config sets them")
    computed: dict[str, str] = Field(description="fields filled from the dataset and the config, and how")
    families: dict[str, FamilyPresetOut] = Field(
        description="what the preset does instead on a base of these families (flux1: the FLUX.1 trainers' "
        "values), by config.model_family or, with auto, the base model's family in GET /v1/models"
    )

    @classmethod
    def of(cls, preset: Preset) -> PresetOut:
        return cls(
            name=preset.name,
            description=preset.description,
            values=preset.fixed_values(),
            computed=computed_fields(),
            families={
                family: FamilyPresetOut(values=preset.fixed_values(family), computed=computed_fields(family))
                for family in FAMILY_VALUES
            },
        )


class FamilyFieldsOut(BaseModel):
    label: str = Field(description="the family's name for people, e.g. FLUX.1")
    fields: list[str] = Field(
        description="config fields only this family reads, or defaults differently: its own form section, "
        "in order"
    )
    not_applicable: dict[str, str] = Field(
        description="config fields this family cannot use, and why: setting one is a 422 naming "
        "config.<field> (POST /v1/plan, POST /v1/jobs)"
    )
    defaults: dict[str, str] = Field(
        description="what each of `fields` trains with on this family when left unset, in words"
    )
    notes: dict[str, str] = Field(description="config field -> a line to add to its help on this family")
    size_multiple: int = Field(
        description="pixels that resolution and bucket_reso_steps must be a multiple of for this family"
    )

    @classmethod
    def of(cls, family: str) -> FamilyFieldsOut:
        f = family_fields(family)
        return cls(
            label=f.label,
            fields=list(f.fields),
            not_applicable=f.not_applicable,
            defaults=f.defaults,
            notes=f.notes,
            size_multiple=f.size_multiple,
        )


class PresetList(BaseModel):
    items: list[PresetOut]
    families: dict[str, FamilyFieldsOut] = Field(
        description="per model family (GET /v1/models' family): which config fields apply to it, so a form "
        "shows only those"
    )


@router.get("", response_model=PresetList, responses=_ERRORS, operation_id="list_presets")
async def list_presets(owner: Owner) -> PresetList:
    """Every preset, and per model family the config fields that apply to it. A preset fills only the
    fields a job's config leaves out: what you set always wins."""
    return PresetList(
        items=[PresetOut.of(p) for p in PRESETS.values()],
        families={family: FamilyFieldsOut.of(family) for family in FAMILIES},
    )


@router.get("/{name}", response_model=PresetOut, responses=_ERRORS, operation_id="get_preset")
async def get_preset(name: str, owner: Owner) -> PresetOut:
    """One preset: its description, the values it sets and the fields it computes."""
    preset = PRESETS.get(name)
    if preset is None:
        raise NotFoundError(f"no preset {name!r}; there are {', '.join(PRESETS)}", details={"name": name})
    return PresetOut.of(preset)
