"""/v1/plan: a job's dry run (nothing is stored or queued); /v1/configs/kohya and /v1/configs/sd-scripts:
import a kohya_ss GUI config, or sd-scripts' training and dataset TOML files."""

from __future__ import annotations

from itertools import islice
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.datasets.service import owned_dataset
from api.deps import JobsRead, Owner, State
from api.errors import validate_json_model
from api.jobs.submission import dataset_job_config, parse_config
from api.models.service import base_model_note, require_known_base_model, with_catalogue_name
from api.openapi_doc import schema_ref
from api.queue.service import job_queue
from api.schemas import error_responses
from api.state import AppState
from api.uploads import read_json_object
from shared.catalogue.families import ModelFamily
from shared.config.family_options import size_multiple
from shared.config.kohya_import import import_kohya_config
from shared.config.presets import PlannedRun, checkpoint_schedule, plan_run
from shared.config.sd_scripts_import import SCRIPTS, import_sd_scripts_config
from shared.config.spec import TrainingConfig
from shared.datasets.layout import (
    MAX_REPEATS,
    DatasetLayout,
    ImageEntry,
    Subset,
    parse_repeats_folder,
    split_tokens,
)
from shared.datasets.stored import dataset_layout, image_sizes
from shared.errors import LorabakeError, NotFoundError
from shared.jobs.run_speeds import estimate_training, queue_gpu_model
from shared.vram.cards import add_vram

router = APIRouter(tags=["plan"])

_ERRORS = error_responses(401, 403, 422, 503)
MAX_CHECKPOINTS = 1000  # files listed in a dry run; `checkpoint_count` has them all
MAX_IMAGES = 200_000  # synthetic images in a `counts` layout


# --- request bodies ----------------------------------------------------------------------------------------


class SizeCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(..., ge=1, le=100_000)
    height: int = Field(..., ge=1, le=100_000)
    count: int = Field(..., ge=1, le=MAX_IMAGES)


class SubsetCount(BaseModel):
    """One folder of the dataset: `img/6_lisabp woman` with 34 images, or a flat folder (`folder` plain)."""

    model_config = ConfigDict(extra="forbid")
    folder: str = Field("", max_length=1000, description="e.g. 'img/6_lisabp woman'; '' for a flat dataset")
    images: int = Field(..., ge=1, le=MAX_IMAGES)
    repeats: int | None = Field(
        None, ge=1, le=MAX_REPEATS, description="Kohya folders: N (else read from the folder name)"
    )
    is_reg: bool = False
    sizes: list[SizeCount] | None = Field(
        None, description="(width, height) counts of the images, for the bucket table; all subsets or none"
    )


class DatasetCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subsets: list[SubsetCount] = Field(..., min_length=1, max_length=200)


class CheckpointOut(BaseModel):
    file: str
    kind: str  # epoch, step or final
    epoch: int
    step: int
    kept: bool  # False: deleted later by save_last_n_epochs / save_last_n_steps


class PlanOut(BaseModel):
    source: str  # "dataset" or "counts"
    layout: str  # "kohya" or "flat"
    family: ModelFamily | None = Field(
        description="the family the job trains for: config.model_family, else the catalogue's for its "
        "base_model; null when neither says (a .ckpt, a hub id not in the catalogue)"
    )
    size_multiple: int = Field(
        description="pixels that resolution and bucket_reso_steps must be a multiple of for that family "
        "(16 for flux1: VAE factor 8 x 2x2 latent packing; 8 otherwise)"
    )
    config: dict[str, Any]  # after the preset: what POST /v1/jobs would store
    plan: dict[str, Any]  # what POST /v1/jobs would store (warnings included)
    checkpoints: list[CheckpointOut]
    checkpoint_count: int
    warnings: list[dict[str, Any]]
    estimate: dict[str, Any] = Field(
        description="the expected run time in seconds (`seconds`: captioning, when the config captions "
        "first, plus training), with each part's steps/s and `basis`: `history` (how many measured runs "
        "of the family, on which GPU model, sharing which settings) or `default` (docs/operations.md)"
    )
    vram: dict[str, Any] | None = Field(
        description="the predicted peak GPU memory on one card (`peak_bytes`, `peak_phase`: caching or "
        "training), its `parts`, and per card size (`cards`: 24, 16, 12 GB) whether it fits and the cheapest "
        "changes of config fields that make it fit; null for a family not known before the run "
        "(docs/API.md, shared/vram/estimate.py)"
    )


class KohyaImportOut(BaseModel):
    config: dict[str, Any]
    mapped: list[dict[str, Any]]
    ignored: list[dict[str, Any]]
    unsupported: list[dict[str, Any]]
    notes: list[str]


# For the OpenAPI document only: the route reads its body itself (config errors name `config.<field>`).
class PlanJsonBody(BaseModel):
    """POST /v1/plan: the config, and the images as one of `dataset_id`, `counts`."""

    model_config = ConfigDict(extra="forbid")
    config: TrainingConfig = Field(description="the training config, as for POST /v1/jobs (or its JSON text)")
    dataset_id: str | None = Field(None, description="a stored dataset of yours")
    counts: DatasetCounts | None = Field(None, description="subsets and their image counts")


_PLAN_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": schema_ref(PlanJsonBody)}}}
}


def _unprocessable(message: str, field: str, code: str = "invalid_request") -> LorabakeError:
    return LorabakeError(
        message, code=code, details={"fields": [{"field": field, "message": message}]}, status_code=422
    )


# --- a layout from counts ----------------------------------------------------------------------------------


def parse_counts(raw: object) -> DatasetCounts:
    return validate_json_model(DatasetCounts, raw, "counts", "invalid_counts")


def counts_layout(counts: DatasetCounts) -> tuple[DatasetLayout, dict[str, tuple[int, int]] | None]:
    """A synthetic layout (image paths `{folder}/{n:06d}.png`) and, when every subset has sizes, the sizes."""
    items = counts.subsets
    total = sum(s.images for s in items)
    if total > MAX_IMAGES:
        raise _unprocessable(f"at most {MAX_IMAGES} images in all, got {total}", "counts.subsets")
    with_sizes = [s.sizes is not None for s in items]
    if any(with_sizes) and not all(with_sizes):
        missing = with_sizes.index(False)
        raise _unprocessable("give sizes for every subset or for none", f"counts.subsets.{missing}.sizes")
    folders = [s.folder.strip().strip("/") for s in items]
    flat = len(items) == 1 and not items[0].is_reg and folder_parts(folders[0]) is None
    if flat and items[0].repeats is not None:
        raise _unprocessable(
            "a flat dataset's repeats come from config.repeats (or the preset); leave repeats out, or name "
            "the folder `N_trigger class`",
            "counts.subsets.0.repeats",
        )
    if not any(not s.is_reg for s in items):
        raise _unprocessable("at least one subset must hold training images (is_reg false)", "counts.subsets")

    subsets: list[Subset] = []
    sizes: dict[str, tuple[int, int]] = {}
    for index, (item, folder) in enumerate(zip(items, folders, strict=True)):
        where = f"counts.subsets.{index}"
        parts = folder_parts(folder)
        if flat:
            repeats, tokens = 1, None  # the flat repeats are config.repeats (plan_run applies them)
        else:
            named = parts[0] if parts else None
            if item.repeats is not None and named is not None and item.repeats != named:
                raise _unprocessable(
                    f"repeats {item.repeats} differs from the folder name's {named}", f"{where}.repeats"
                )
            repeats = item.repeats or named
            if repeats is None:
                raise _unprocessable(
                    "a Kohya subset needs repeats: give `repeats` or name the folder `N_trigger class`",
                    f"{where}.repeats",
                )
            if not folder:
                folder = f"{'reg' if item.is_reg else 'img'}/{repeats}_subset{index}"
            tokens = parts[1] if parts else None
        if folder in {s.folder for s in subsets}:
            raise _unprocessable(f"folder {folder!r} is listed twice", f"{where}.folder")
        trigger, class_token = split_tokens(tokens, item.is_reg)
        paths = [f"{folder}/{n:06d}.png" if folder else f"{n:06d}.png" for n in range(item.images)]
        if item.sizes is not None:
            given = sum(c.count for c in item.sizes)
            if given != item.images:
                raise _unprocessable(
                    f"the size counts add up to {given}, not the subset's {item.images} images",
                    f"{where}.sizes",
                )
            expanded = [(c.width, c.height) for c in item.sizes for _ in range(c.count)]
            sizes.update(zip(paths, expanded, strict=True))
        entries = tuple(ImageEntry(p, None) for p in paths)
        subsets.append(Subset(folder, repeats, trigger, class_token, item.is_reg, entries))
    subsets.sort(key=lambda s: s.folder)
    layout = DatasetLayout("flat" if flat else "kohya", tuple(subsets))
    return layout, (sizes if all(with_sizes) else None)


def folder_parts(folder: str) -> tuple[int, str] | None:
    """(N, tokens) of a Kohya folder's last path part, None for any other name."""
    return parse_repeats_folder(folder.rsplit("/", 1)[-1]) if folder else None


# --- the dry run -------------------------------------------------------------------------------------------


def _dataset_run(
    state: AppState, owner: str, config: TrainingConfig, dataset_id: str, family: str | None
) -> PlannedRun:
    """As submit_dataset_job plans it: the stored layout, flat options from the upload, stored sizes."""
    with state.sessions() as session:
        try:
            dataset = owned_dataset(session, owner, dataset_id)
        except NotFoundError as exc:
            raise _unprocessable(f"no dataset {dataset_id}", "dataset_id", code="unknown_dataset") from exc
        layout = dataset_layout(dataset)
        config = dataset_job_config(config, layout)
        return plan_run(config, layout, image_sizes(dataset), dataset.report, family)


def _plan_out(state: AppState, source: str, run: PlannedRun, family: str | None) -> PlanOut:
    schedule = list(checkpoint_schedule(run.config, run.plan))
    config, plan = run.config.model_dump(mode="json"), run.plan_json()
    queue = job_queue(state, run.config, None)  # the workers that would run it: their card
    with state.sessions() as session:
        card = queue_gpu_model(session, state.settings, queue)
        plan["estimate"] = estimate_training(session, config, plan, family, card)  # as a job stores it
        add_vram(session, state.settings, run.config, plan, family, queue)  # GPU memory, as a job stores it
    return PlanOut(
        source=source,
        layout=run.layout.kind,
        family=family,  # type: ignore[arg-type]
        size_multiple=size_multiple(family),
        config=config,
        plan=plan,
        checkpoints=[CheckpointOut(**c) for c in islice(schedule, MAX_CHECKPOINTS)],
        checkpoint_count=len(schedule),
        warnings=run.warnings,
        estimate=plan["estimate"],
        vram=plan["vram"],
    )


@router.post(
    "/v1/plan", response_model=PlanOut, responses=_ERRORS, openapi_extra=_PLAN_BODY, operation_id="plan_job"
)
async def dry_run(request: Request, owner: JobsRead, state: State) -> PlanOut:
    """What a job would do, without storing or queueing anything: `config` (as for POST /v1/jobs) with a
    stored `dataset_id` or `counts` ({"subsets": [{"folder": "img/6_lisabp woman", "images": 34}]}).
    Returns the config after its preset, the plan (per subset, buckets when sizes are known), the LoRA files
    that will be saved with their steps, warnings, and the family it trains for with its size multiple."""
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"config", "dataset_id", "counts"})
    if unknown:
        raise _unprocessable(f"unknown field {unknown[0]!r}", unknown[0])
    config = parse_config(body.get("config"))
    config = await run_in_threadpool(with_catalogue_name, state, config)  # a single file by its stem
    family = await run_in_threadpool(require_known_base_model, state, config)
    dataset_id, counts = body.get("dataset_id"), body.get("counts")
    if (dataset_id is None) == (counts is None):
        raise _unprocessable("give either dataset_id or counts", "dataset_id", code="missing_field")
    if dataset_id is not None:
        if not isinstance(dataset_id, str) or not dataset_id:
            raise _unprocessable("dataset_id must be a dataset's id (a string)", "dataset_id")
        run = await run_in_threadpool(_dataset_run, state, owner, config, dataset_id, family)
        return await run_in_threadpool(_plan_out, state, "dataset", run, family)
    layout, sizes = counts_layout(parse_counts(counts))
    run = await run_in_threadpool(plan_run, config, layout, sizes, None, family)
    return await run_in_threadpool(_plan_out, state, "counts", run, family)


_KOHYA_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "a kohya_ss GUI configuration (its saved JSON)"}
            }
        },
    }
}


@router.post(
    "/v1/configs/kohya",
    response_model=KohyaImportOut,
    responses=_ERRORS,
    openapi_extra=_KOHYA_BODY,
    operation_id="import_kohya_config",
)
async def import_kohya(request: Request, owner: Owner, state: State) -> KohyaImportOut:
    """Read a kohya_ss GUI configuration JSON (LoRA tab, Configuration file > Save): `config` holds the
    TrainingConfig fields with the same meaning (add base_model if it is missing), `mapped` where each key
    went, `ignored` keys with no effect here, `unsupported` values that cannot be trained the same way."""
    body = await read_json_object(request)
    imported = import_kohya_config(body).to_dict()
    return await _with_model_note(state, imported)


async def _with_model_note(state: AppState, imported: dict[str, Any]) -> KohyaImportOut:
    """The answer, with a note when base_model is not a model this deployment has."""
    base_model = imported["config"].get("base_model")
    if isinstance(base_model, str):
        note = await run_in_threadpool(base_model_note, state, base_model)
        if note is not None:
            imported["notes"].append(note)
    return KohyaImportOut(**imported)


_SD_SCRIPTS_FIELDS = ("config_toml", "dataset_toml", "script")
_SD_SCRIPTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    # null is taken as left out, so each field documents it
                    "properties": {
                        "config_toml": {
                            "anyOf": [{"type": "string"}, {"type": "null"}],
                            "description": "the training TOML's text (train_network.py --config_file)",
                        },
                        "dataset_toml": {
                            "anyOf": [{"type": "string"}, {"type": "null"}],
                            "description": "the dataset TOML's text (--dataset_config)",
                        },
                        "script": {
                            "anyOf": [
                                {"type": "string", "enum": [*SCRIPTS, *(f"{s}.py" for s in SCRIPTS)]},
                                {"type": "null"},
                            ],
                            "description": "the script the files are for: sdxl_train_network sets SDXL, "
                            "flux_train_network FLUX.1",
                        },
                    },
                }
            }
        },
    }
}


def sd_scripts_body(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(config_toml, dataset_toml, script) of the body; anything else is a 422 naming the field."""
    unknown = sorted(set(body) - set(_SD_SCRIPTS_FIELDS))
    if unknown:
        raise _unprocessable(f"unknown field {unknown[0]!r}", unknown[0])
    for name in _SD_SCRIPTS_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _unprocessable(f"{name} must be a string (the file's text)", name)
    if body.get("config_toml") is None and body.get("dataset_toml") is None:
        raise _unprocessable("give config_toml, dataset_toml or both", "config_toml", code="missing_field")
    return body.get("config_toml"), body.get("dataset_toml"), body.get("script")


@router.post(
    "/v1/configs/sd-scripts",
    response_model=KohyaImportOut,
    responses=_ERRORS,
    openapi_extra=_SD_SCRIPTS_BODY,
    operation_id="import_sd_scripts_config",
)
async def import_sd_scripts(request: Request, owner: Owner, state: State) -> KohyaImportOut:
    """Read sd-scripts' own TOML files: `config_toml` (the training TOML of --config_file) and/or
    `dataset_toml` (--dataset_config), and `script` (train_network, sdxl_train_network or flux_train_network;
    without it, network_module networks.lora_flux or a FLUX model file means FLUX.1). The answer is as
    for a kohya_ss config: `config`, `mapped`, `ignored`, `unsupported` and `notes` (which say which zip
    folder each dataset subset's images go in). Malformed TOML, or a value of the wrong type, is a 422 naming
    the file and the line or key."""
    config_toml, dataset_toml, script = sd_scripts_body(await read_json_object(request))
    imported = import_sd_scripts_config(config_toml, dataset_toml, script).to_dict()
    return await _with_model_note(state, imported)
