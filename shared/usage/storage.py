"""Storage an owner holds, from the rows that record real object sizes: stored datasets, jobs' own dataset
copies (a job made from a stored dataset reads the dataset's zip and holds none), their files and images,
and their resume states. Rows whose objects retention deleted (`expired_at`) hold nothing. Small objects no
row sizes (thumbnails, caption snapshots, resume records) are left out."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Artifact, Dataset, Job

IMAGE_KINDS = ("sample", "image", "grid")  # pictures: training samples, previews, comparison grids


@dataclass(frozen=True)
class StorageHeld:
    datasets_bytes: int = 0  # stored datasets (POST /v1/datasets)
    job_datasets_bytes: int = 0  # zips uploaded with a job
    files_bytes: int = 0  # LoRA files and the other files jobs published
    samples_bytes: int = 0  # sample images, previews, comparison grids
    resume_state_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(asdict(self).values())


def storage_held(session: Session, owner: str | None = None) -> dict[str, StorageHeld]:
    """Per owner (only `owner`'s when given; an owner holding nothing is absent)."""
    parts: dict[str, dict[str, int]] = {}

    def add(part: str, rows) -> None:  # noqa: ANN001 - (owner, bytes) rows
        for row_owner, size in rows:
            if size:
                parts.setdefault(row_owner, {})[part] = int(size)

    def of_owner(query, column):  # noqa: ANN001, ANN202
        return query if owner is None else query.where(column == owner)

    live_job = Job.expired_at.is_(None)
    add(
        "datasets_bytes",
        session.execute(
            of_owner(select(Dataset.owner, func.sum(Dataset.bytes)), Dataset.owner)
            .where(Dataset.expired_at.is_(None))
            .group_by(Dataset.owner)
        ),
    )
    add(
        "job_datasets_bytes",
        session.execute(
            of_owner(select(Job.owner, func.sum(Job.dataset_bytes)), Job.owner)
            .where(live_job, Job.dataset_key.like("jobs/%"))  # the job's own copy, not a stored dataset's
            .group_by(Job.owner)
        ),
    )
    add(
        "resume_state_bytes",
        session.execute(
            of_owner(select(Job.owner, func.sum(Job.resume_state_bytes)), Job.owner)
            .where(live_job)
            .group_by(Job.owner)
        ),
    )
    is_image = Artifact.kind.in_(IMAGE_KINDS)
    for part, which in (("files_bytes", ~is_image), ("samples_bytes", is_image)):
        add(
            part,
            session.execute(
                of_owner(select(Job.owner, func.sum(Artifact.size_bytes)), Job.owner)
                .join(Artifact, Artifact.job_id == Job.id)
                .where(live_job, Artifact.expired_at.is_(None), which)
                .group_by(Job.owner)
            ),
        )
    return {name: StorageHeld(**held) for name, held in parts.items()}


def owner_storage(session: Session, owner: str) -> StorageHeld:
    return storage_held(session, owner).get(owner, StorageHeld())


def forget_resume_state(sessions: sessionmaker[Session], job_id: str) -> None:
    """After the job's resume state was deleted from storage: it holds no bytes there any more."""
    with sessions() as session:
        session.execute(
            update(Job)
            .execution_options(synchronize_session=False)
            .where(Job.id == job_id, Job.resume_state_bytes != 0)
            .values(resume_state_bytes=0)
        )
        session.commit()
