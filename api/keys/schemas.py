"""Bodies of /v1/keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.db.keys import SCOPES
from shared.db.models import ApiKey

_OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,199}$"


class KeyLimits(BaseModel):
    """Per-key limits: submissions past `max_queued` or `submissions_per_minute` get a 429 with Retry-After;
    `max_running` and `priority` rule when the key's jobs start (docs/API.md, "Queue and limits");
    `max_retention_days` bounds how long its jobs' files are kept; the quotas `gpu_seconds_per_month` and
    `storage_bytes` cap the owner's usage (GET /v1/usage). Unset: no limit."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="jobs of this key running at once (in every queue); the rest wait, without holding up "
        "other keys' jobs",
    )
    priority: int | None = Field(
        None,
        ge=-100,
        le=100,
        description="a higher-priority key's queued jobs start before a lower one's (default 0); keys of "
        "equal priority take turns by owner",
    )

    max_queued: int | None = Field(
        None, ge=0, le=100_000, description="jobs of this key waiting to start at once"
    )
    submissions_per_minute: float | None = Field(
        None, gt=0, le=10_000, description="jobs this key may submit in any 60 seconds"
    )
    gpu_seconds_per_month: float | None = Field(
        None,
        ge=0,
        le=1e12,
        description="quota: GPU seconds the owner's jobs may use in a calendar month (UTC); once used, a "
        "submission is a 429 `quota_exceeded` (a running job is never stopped)",
    )
    storage_bytes: int | None = Field(
        None,
        ge=0,
        le=10**18,
        description="quota: bytes the owner may hold in storage (datasets, files, samples, resume states); a "
        "submission that would pass it is a 429 `quota_exceeded`",
    )
    max_retention_days: int | None = Field(
        None,
        ge=1,
        le=36_500,
        description="the longest `retention_days` this key's jobs may ask for; its jobs that ask none are "
        "kept the deployment's default, or this if that is longer (or forever)",
    )


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str = Field(
        pattern=_OWNER_PATTERN, description="the tenant whose jobs and datasets the key reaches"
    )
    name: str = Field("", max_length=200, description="a label to recognize the key by")
    scopes: list[str] | None = Field(None, description=f"any of {', '.join(SCOPES)}; default: all of them")
    admin: bool = Field(False, description="may also manage every owner's keys")
    limits: KeyLimits = Field(default_factory=KeyLimits)


class KeyOut(BaseModel):
    id: str
    owner: str
    name: str
    prefix: str = Field(description="the key's first characters, to recognize it by")
    admin: bool
    scopes: list[str]
    limits: KeyLimits
    created_at: datetime
    last_used_at: datetime | None = Field(description="to within a minute; null: never used")
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            owner=row.owner,
            name=row.name,
            prefix=row.prefix,
            admin=row.admin,
            scopes=list(row.scopes or []),
            limits=KeyLimits(**(row.limits or {})),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None = None
