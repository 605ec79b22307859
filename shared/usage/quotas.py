"""Per-key quotas on the owner's usage, checked when the key submits work (a job, a dataset):

- `gpu_seconds_per_month`: GPU seconds the owner's jobs used this calendar month (UTC), of every kind;
- `storage_bytes`: bytes the owner holds in storage (shared/usage/storage.py).

A submission is refused with a 429 `quota_exceeded` naming the quota, its limit and the use when the use has
reached the limit, or when what it brings would take the use past it: the bytes of an upload, the predicted
GPU seconds of a job (its `plan.estimate`, shared/jobs/run_speeds.py). What runs is never stopped: a
job admitted under its quota finishes even if it goes past it, and the next submission is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time

from sqlalchemy.orm import Session

from shared.errors import LorabakeError
from shared.usage.reads import gpu_seconds_this_month, next_month_start
from shared.usage.storage import owner_storage

QUOTAS = ("gpu_seconds_per_month", "storage_bytes")


class QuotaExceeded(LorabakeError):
    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, details: dict, retry_after: int | None = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after  # the API sends it as Retry-After when set


@dataclass(frozen=True)
class QuotaUse:
    quota: str
    limit: float
    used: float
    resets_at: datetime | None = None  # the month's end, for the GPU quota


def quota_uses(
    session: Session, owner: str, limits: Mapping[str, float], now: datetime | None = None
) -> list[QuotaUse]:
    """The owner's use of each quota the key sets (none set: an empty list)."""
    now = now or datetime.now(UTC)
    uses: list[QuotaUse] = []
    if (limit := limits.get("gpu_seconds_per_month")) is not None:
        resets = datetime.combine(next_month_start(now.astimezone(UTC).date()), time(0), tzinfo=UTC)
        used = gpu_seconds_this_month(session, owner, now)
        uses.append(QuotaUse("gpu_seconds_per_month", float(limit), round(used, 3), resets))
    if (limit := limits.get("storage_bytes")) is not None:
        uses.append(QuotaUse("storage_bytes", float(limit), float(owner_storage(session, owner).total_bytes)))
    return uses


def check_quotas(
    session: Session,
    owner: str,
    limits: Mapping[str, float],
    *,
    adding_bytes: int = 0,
    adding_gpu_seconds: float = 0.0,
    now: datetime | None = None,
) -> None:
    """Raises QuotaExceeded for the first quota the submission would exceed."""
    now = now or datetime.now(UTC)
    for use in quota_uses(session, owner, limits, now):
        adding = adding_bytes if use.quota == "storage_bytes" else adding_gpu_seconds
        if use.used < use.limit and use.used + adding <= use.limit:
            continue
        details = {"quota": use.quota, "limit": _number(use.limit), "used": _number(use.used)}
        if use.quota == "gpu_seconds_per_month":
            assert use.resets_at is not None
            details["resets_at"] = use.resets_at.isoformat()
            if adding:
                details["adding"] = round(adding, 1)
            expected = f" and this job is expected to take {adding:.0f} more" if adding else ""
            raise QuotaExceeded(
                f"this owner used {use.used:.0f} GPU seconds this month{expected}, past its quota "
                f"(gpu_seconds_per_month {_number(use.limit)}); it resets at {use.resets_at.isoformat()}",
                details=details,
                retry_after=max(1, int((use.resets_at - now).total_seconds())),
            )
        if adding:
            details["adding"] = adding
        raise QuotaExceeded(
            f"this owner holds {int(use.used)} bytes in storage"
            + (f" and this adds {adding}" if adding else "")
            + f", past its quota (storage_bytes {_number(use.limit)}); deleting datasets frees some",
            details=details,
        )


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
