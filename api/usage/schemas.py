"""Bodies of /v1/usage."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.usage.quotas import QuotaUse
from shared.usage.reads import Counts, Period
from shared.usage.storage import StorageHeld


class UsageCounts(BaseModel):
    gpu_seconds: float = Field(description="seconds a worker's GPU (or CPU) was held by the jobs")
    steps_trained: int = Field(description="optimizer steps trained, each step of a job once")
    images_captioned: int = Field(description="images captioned (caption jobs, training jobs' captioning)")

    @classmethod
    def of(cls, counts: Counts) -> UsageCounts:
        return cls(
            gpu_seconds=round(counts.gpu_seconds, 3),
            steps_trained=counts.steps_trained,
            images_captioned=counts.images_captioned,
        )


class UsageByKind(UsageCounts):
    kind: str = Field(description="the jobs' kind: train, caption, generate, compare")
    gpu: str = Field(description="the GPU model the jobs ran on, as CUDA names it; `cpu` without one")


class UsagePeriod(UsageCounts):
    period: date = Field(description="the day, or the first day of the month (UTC)")
    by_kind: list[UsageByKind]

    @classmethod
    def of_period(cls, period: Period) -> UsagePeriod:
        parts = [
            UsageByKind(kind=kind, gpu=gpu, **UsageCounts.of(counts).model_dump())
            for (kind, gpu), counts in sorted(period.by_kind_and_gpu.items())
        ]
        return cls(period=period.start, by_kind=parts, **UsageCounts.of(period.totals).model_dump())


class StorageOut(BaseModel):
    """Bytes held in storage now (files retention deleted are not counted)."""

    total_bytes: int
    datasets_bytes: int = Field(description="stored datasets")
    job_datasets_bytes: int = Field(description="zips uploaded with a job (a stored dataset's jobs: none)")
    files_bytes: int = Field(description="LoRA files and the other files jobs published")
    samples_bytes: int = Field(description="sample images, previews and comparison grids")
    resume_state_bytes: int = Field(description="kept to resume (or continue) jobs")

    @classmethod
    def of(cls, held: StorageHeld) -> StorageOut:
        return cls(
            total_bytes=held.total_bytes,
            datasets_bytes=held.datasets_bytes,
            job_datasets_bytes=held.job_datasets_bytes,
            files_bytes=held.files_bytes,
            samples_bytes=held.samples_bytes,
            resume_state_bytes=held.resume_state_bytes,
        )


class QuotaOut(BaseModel):
    quota: Literal["gpu_seconds_per_month", "storage_bytes"]
    limit: float
    used: float = Field(description="this calendar month's GPU seconds (UTC), or the bytes held now")
    resets_at: datetime | None = Field(None, description="when the monthly quota starts again from 0")

    @classmethod
    def of(cls, use: QuotaUse) -> QuotaOut:
        return cls(quota=use.quota, limit=use.limit, used=use.used, resets_at=use.resets_at)  # type: ignore[arg-type]


class UsageOut(BaseModel):
    owner: str
    group: Literal["day", "month"]
    since: date = Field(description="the first day counted (UTC)")
    until: date = Field(description="the last day counted (UTC), included")
    totals: UsageCounts = Field(description="over the whole range")
    periods: list[UsagePeriod] = Field(description="oldest first; a day or month with no usage is left out")
    storage: StorageOut
    quotas: list[QuotaOut] = Field(
        description="the quotas of the key that asked and their use (only for its own owner's usage)"
    )
