"""Model families behind one interface (base.FamilyModel): the engine asks `load_family_model` for the
family's model and never branches on the family itself. Adding a family: a module here and a line below."""

from __future__ import annotations

from collections.abc import Callable

from shared.config.spec import TrainingConfig
from worker.training.families.base import FamilyModel, NetworkParams
from worker.training.model_loading import ResolvedModel

__all__ = ["FamilyModel", "NetworkParams", "load_family_model"]


def _load_sd(resolved: ResolvedModel, family: str, config: TrainingConfig) -> FamilyModel:
    from worker.training.families.sd import SDModel

    return SDModel.load(resolved, family, config)


def _load_flux(resolved: ResolvedModel, family: str, config: TrainingConfig) -> FamilyModel:
    from worker.training.families.flux import FluxModel

    return FluxModel.load(resolved, family, config)


def _load_chroma(resolved: ResolvedModel, family: str, config: TrainingConfig) -> FamilyModel:
    from worker.training.families.chroma import ChromaModel

    return ChromaModel.load(resolved, family, config)


# family (shared/catalogue/families.py's names) -> loader of that family's FamilyModel
LOADERS: dict[str, Callable[[ResolvedModel, str, TrainingConfig], FamilyModel]] = {
    "sd1": _load_sd,
    "sd2": _load_sd,
    "sdxl": _load_sd,
    "flux1": _load_flux,
    "chroma": _load_chroma,
}


def load_family_model(resolved: ResolvedModel, family: str, config: TrainingConfig) -> FamilyModel:
    try:
        loader = LOADERS[family]
    except KeyError:
        raise ValueError(f"no training code for model family {family!r}") from None
    return loader(resolved, family, config)
