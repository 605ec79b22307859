"""Job response bodies. Jobs render from their row (shared/resources.py); nothing here is computed twice."""

from __future__ import annotations

from pydantic import BaseModel

from shared.resources import ArtifactOut, JobOut, ProgressOut

__all__ = ["ArtifactOut", "JobList", "JobOut", "ProgressOut"]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page
