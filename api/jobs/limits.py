"""Per-key submission limits, checked before anything of a job is stored: a 429 with Retry-After.

- `max_queued`: jobs of the key waiting to start (queued) at once;
- `submissions_per_minute`: jobs the key submitted in any 60 seconds (a sliding window over its jobs).

Checked by counting the key's jobs, so every API replica sees the same; two submissions racing past a
limit at the same instant can both get in (the limit is a guard, not a quota ledger). The key's quotas on
its owner's usage (`gpu_seconds_per_month`, `storage_bytes`) are checked after them: shared/usage/quotas.py.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.keys import Identity
from shared.db.models import Job, JobStatus, as_utc, utcnow
from shared.errors import LorabakeError
from shared.usage.quotas import QUOTAS, check_quotas

if TYPE_CHECKING:
    from api.state import AppState

WINDOW = timedelta(seconds=60)
QUEUED_RETRY_SECONDS = 30  # a queued job starting takes a while: no point asking every second


class LimitExceeded(LorabakeError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str, retry_after: int, details: dict) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


def check_submission_limits(session: Session, caller: Identity) -> None:
    max_queued = caller.limit("max_queued")
    if max_queued is not None:
        queued = session.scalar(
            select(func.count(Job.id)).where(Job.api_key_id == caller.key_id, Job.status == JobStatus.queued)
        )
        if (queued or 0) >= max_queued:
            raise LimitExceeded(
                f"this key has {queued} jobs waiting to start, its limit (max_queued {int(max_queued)})",
                code="too_many_queued",
                retry_after=QUEUED_RETRY_SECONDS,
                details={"limit": "max_queued", "value": int(max_queued)},
            )
    rate = caller.limit("submissions_per_minute")
    if rate is not None:
        since = utcnow() - WINDOW
        recent = list(
            session.scalars(
                select(Job.created_at)
                .where(Job.api_key_id == caller.key_id, Job.created_at > since)
                .order_by(Job.created_at)
            )
        )
        allowed = max(1, math.floor(rate))
        if len(recent) >= allowed:
            # the window frees a slot when its oldest submission leaves it
            frees_at = as_utc(recent[len(recent) - allowed]) + WINDOW
            wait = max(1, math.ceil((frees_at - utcnow()).total_seconds()))
            raise LimitExceeded(
                f"this key may submit {allowed} jobs per minute",
                code="rate_limited",
                retry_after=wait,
                details={"limit": "submissions_per_minute", "value": rate},
            )


def check_limits(state: AppState, caller: Identity) -> None:
    """Before a submission is read: the key's limits, then its quotas (shared/usage/quotas.py)."""
    with state.sessions() as session:
        check_submission_limits(session, caller)
        check_quotas(session, caller.owner, dict(caller.limits))


def check_quota_limits(state: AppState, caller: Identity, *, adding_bytes: int = 0) -> None:
    """The key's quotas alone: for dataset uploads and caption jobs (no queue limits), and once an upload's
    size is known (`adding_bytes`: what it would add to storage)."""
    if not any(name in QUOTAS for name, _ in caller.limits):
        return
    with state.sessions() as session:
        check_quotas(session, caller.owner, dict(caller.limits), adding_bytes=adding_bytes)
