"""The catalogue as the API uses it: listing, and refusing a job for a base model or a captioner no worker
has."""

from __future__ import annotations

from datetime import timedelta

from api.state import AppState
from shared.catalogue.records import (
    CatalogueModel,
    UnknownBaseModel,
    catalogue_family,
    catalogue_name,
    check_base_model,
    check_captioner,
    list_models,
)
from shared.config.captioning import CaptionConfig
from shared.config.family_options import checked_family
from shared.config.spec import TrainingConfig


def _retention(state: AppState) -> timedelta:
    return timedelta(days=state.settings.model_catalogue_days)


def catalogue(state: AppState) -> list[CatalogueModel]:
    with state.sessions() as session:
        alive_within = 3 * state.settings.lease_renew_seconds  # as readiness counts workers
        return list_models(session, _retention(state), alive_within)


def with_catalogue_name(state: AppState, config: TrainingConfig) -> TrainingConfig:
    """The config with base_model as the catalogue lists it: a single file named by its stem ("flux1-dev")
    becomes its file name, so everything after (the catalogue's family, routing, the worker) finds it."""
    with state.sessions() as session:
        name = catalogue_name(session, config.base_model, _retention(state))
    return config if name == config.base_model else config.model_copy(update={"base_model": name})


def require_known_base_model(state: AppState, config: TrainingConfig) -> str | None:
    """422 naming config.base_model (with close names) before anything of a job is stored; then the family
    the job trains for (explicit, else the catalogue's; None when neither says), with a 422 naming
    config.model_family or config.<field> when the config does not fit the catalogue's family."""
    with state.sessions() as session:
        check_base_model(session, config.base_model, _retention(state), state.settings.allow_model_downloads)
        family = catalogue_family(session, config.base_model, _retention(state))
    return checked_family(config, family)


def require_known_captioner(
    state: AppState, config: CaptionConfig | None, field_prefix: str, chosen_by: str | None = None
) -> None:
    """422 naming `<field_prefix><method>_model`, with the `hf download` command that gets it, unless a
    worker has the captioner `config` loads (or may download it); nothing when there is no captioning."""
    if config is None:
        return
    assert state.settings.models_dir is not None  # set by Settings
    with state.sessions() as session:
        check_captioner(
            session,
            config,
            field_prefix,
            _retention(state),
            state.settings.allow_model_downloads,
            state.settings.models_dir,
            chosen_by,
        )


def require_known_training_captioner(
    state: AppState, requested: TrainingConfig, planned: TrainingConfig
) -> None:
    """require_known_captioner for a training job that captions first, on what `auto` became."""
    auto = requested.captioning is not None and requested.captioning.method == "auto"
    chosen_by = "config.captioning.method 'auto'" if auto else None
    require_known_captioner(state, planned.captioning, "config.captioning.", chosen_by)


def base_model_note(state: AppState, name: str) -> str | None:
    """For an imported config: why its base_model would be refused, or None when it would be taken."""
    try:
        with state.sessions() as session:
            check_base_model(session, name, _retention(state), state.settings.allow_model_downloads)
    except UnknownBaseModel as exc:
        return exc.message + " (set config.base_model to a name GET /v1/models lists)"
    return None
