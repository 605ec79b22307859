"""/v1/models: the base models this deployment can train on, and the captioners it can caption with, as
its workers report them."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Owner, State
from api.models.schemas import ModelList
from api.models.service import catalogue
from api.schemas import error_responses

router = APIRouter(prefix="/v1/models", tags=["models"])
_ERRORS = error_responses(401, 503)


@router.get("", response_model=ModelList, responses=_ERRORS, operation_id="list_models")
def list_base_models(owner: Owner, state: State) -> ModelList:
    """Every base model a worker has reported in the last `model_catalogue_days`, by the name
    `config.base_model` takes, with its family, prediction type, size and how many workers online have it;
    and apart from them (`captioners`), the captioner models, by the name a caption config's
    `<method>_model` takes."""
    return ModelList.of(catalogue(state), state.settings.allow_model_downloads)
