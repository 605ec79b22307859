"""Which LoRA a prompt's `<lora:NAME:...>` names, and which model family a base model or a LoRA is of.

NAME is a LoRA artifact's file name without `.safetensors`, looked up among the caller's own jobs only
(another owner's LoRA is as unknown as a missing one). Several of the caller's jobs can have written the
same name (`lora.safetensors` is the default): the newest job's file is taken, and the job records which
one (`config.loras[].job_id`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config.lora_tags import LoraTag
from shared.config.previews import LoraRef
from shared.db.models import Artifact, BaseModelRecord, Job
from shared.errors import LorabakeError
from shared.jobs.retention import Expired, check_job_files

LORA_SUFFIX = ".safetensors"


def catalogue_family(session: Session, base_model: str) -> str | None:
    """The family a worker read from the base model's files; None when no worker has (or could)."""
    return session.scalar(select(BaseModelRecord.family).where(BaseModelRecord.name == base_model))


def training_family(session: Session, config: dict[str, Any]) -> str | None:
    """The family a training job trained for: its `model_family`, or the catalogue's for its base model."""
    family = config.get("model_family")
    if family and family != "auto":
        return family
    return catalogue_family(session, str(config.get("base_model", "")))


def _newest_lora(session: Session, owner: str, name: str) -> tuple[Artifact, Job] | None:
    row = session.execute(
        select(Artifact, Job)
        .join(Job, Artifact.job_id == Job.id)
        .where(Job.owner == owner, Artifact.kind == "lora", Artifact.name == name + LORA_SUFFIX)
        .order_by(Job.created_at.desc(), Artifact.created_at.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def resolve_loras(
    session: Session, owner: str, tags: Iterable[LoraTag], family: str | None, base_model: str
) -> list[LoraRef]:
    """The owner's artifact for each tag, checked against the base model's family: a 422 naming the tag
    (`unknown_lora`, `lora_family_mismatch`). When either family is unknown the check is left to the
    worker, which refuses a file whose keys do not fit the model."""
    refs: list[LoraRef] = []
    for tag in tags:
        found = _newest_lora(session, owner, tag.name)
        if found is None:
            raise LorabakeError(
                f"{tag.tag}: no LoRA named {tag.name!r} among your jobs' files "
                f"(NAME: a LoRA file name without {LORA_SUFFIX}, as /v1/jobs/{{id}}/artifacts lists it)",
                code="unknown_lora",
                details={"field": "prompt", "tag": tag.tag, "name": tag.name},
                status_code=422,
            )
        artifact, job = found
        try:
            check_job_files(job, artifact)
        except Expired as exc:  # the newest file of that name is gone: a 410 naming the tag and the date
            details = {**exc.details, "field": "prompt", "tag": tag.tag, "name": tag.name}
            raise Expired(f"{tag.tag}: {exc.message}", details=details) from exc
        lora_family = training_family(session, job.config)
        if family is not None and lora_family is not None and lora_family != family:
            raise LorabakeError(
                f"{tag.tag}: {tag.name!r} was trained for {lora_family}, but {base_model!r} is {family}",
                code="lora_family_mismatch",
                details={
                    "field": "prompt",
                    "tag": tag.tag,
                    "name": tag.name,
                    "lora_family": lora_family,
                    "base_model_family": family,
                },
                status_code=422,
            )
        refs.append(
            LoraRef(
                name=tag.name,
                job_id=job.id,
                artifact_id=artifact.id,
                sha256=artifact.sha256,
                epoch=artifact.epoch,
                te_weight=tag.te_weight,
                unet_weight=tag.unet_weight,
                tag=tag.tag,
            )
        )
    return refs
