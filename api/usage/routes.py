"""/v1/usage: GPU seconds, steps and images an owner's jobs used (by day or month, job kind and GPU model),
the storage it holds now, and the asking key's quotas. Any key reads its own owner's; an admin key any
owner's."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import Caller, ScopeError, State
from api.schemas import error_responses
from api.state import AppState
from api.usage.schemas import QuotaOut, StorageOut, UsageCounts, UsageOut, UsagePeriod
from shared.db.keys import Identity
from shared.errors import LorabakeError
from shared.usage.quotas import quota_uses
from shared.usage.reads import Counts, month_start, next_month_start, usage_periods
from shared.usage.storage import owner_storage

router = APIRouter(prefix="/v1/usage", tags=["usage"])
_ERRORS = error_responses(401, 403, 422, 503)
MAX_DAYS = 3700  # about ten years
# A calendar date as written, not anything pydantic reads as one (it takes "0" as 1970-01-01)
ISO_DAY = r"^\d{4}-\d{2}-\d{2}$"


def _day(value: str | None, field: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise LorabakeError(
            f"{field} {value!r} is not a calendar date (YYYY-MM-DD)",
            code="invalid_field",
            details={"field": field},
            status_code=422,
        ) from exc


def _range(group: str, since: date | None, until: date | None) -> tuple[date, date]:
    """Default: this month by day, the last 12 months (this one included) by month."""
    until = until or datetime.now(UTC).date()
    if since is None:
        year_ago = date(until.year - 1, until.month, 1)
        since = month_start(until) if group == "day" else next_month_start(year_ago)
    problem = f"since ({since}) is after until ({until})" if since > until else None
    if (until - since).days > MAX_DAYS:
        problem = f"at most {MAX_DAYS} days at once"
    if problem is not None:
        raise LorabakeError(problem, code="invalid_range", details={"field": "since"}, status_code=422)
    return since, until


def _read(state: AppState, caller: Identity, owner: str, group: str, since: date, until: date) -> UsageOut:
    with state.sessions() as session:
        periods = usage_periods(session, owner, since, until, group)  # type: ignore[arg-type]
        held = owner_storage(session, owner)
        quotas = quota_uses(session, owner, dict(caller.limits)) if owner == caller.owner else []
    totals = Counts()
    for period in periods:
        totals.add(period.totals.gpu_seconds, period.totals.steps_trained, period.totals.images_captioned)
    return UsageOut(
        owner=owner,
        group=group,  # type: ignore[arg-type]
        since=since,
        until=until,
        totals=UsageCounts.of(totals),
        periods=[UsagePeriod.of_period(p) for p in periods],
        storage=StorageOut.of(held),
        quotas=[QuotaOut.of(q) for q in quotas],
    )


@router.get("", response_model=UsageOut, responses=_ERRORS, operation_id="get_usage")
def get_usage(
    caller: Caller,
    state: State,
    owner: Annotated[str | None, Query(max_length=200, description="admin keys: this owner's usage")] = None,
    group: Annotated[Literal["day", "month"], Query(description="one period per UTC day, or month")] = "day",
    since: Annotated[
        str | None, Query(pattern=ISO_DAY, description="first day (UTC, YYYY-MM-DD); default: month's first")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=ISO_DAY, description="last day (UTC, YYYY-MM-DD), included; default: today")
    ] = None,
) -> UsageOut:
    """Counted by the workers as the jobs work (GPU seconds at each lease renewal and at each run's end;
    steps as they are trained; images as they are captioned), per UTC day. A job that ran past midnight
    counts on both days. `storage` is what the owner holds now."""
    if owner is not None and owner != caller.owner and not caller.admin:
        raise ScopeError("only an admin key reads another owner's usage", details={"scope": "admin"})
    first, last = _range(group, _day(since, "since"), _day(until, "until"))
    return _read(state, caller, owner or caller.owner, group, first, last)
