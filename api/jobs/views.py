"""The body of `GET /v1/jobs/{id}`, rendered once per version of the job.

Clients poll this path, and most polls find the job as the last one did. Every change to a job or its
files goes through a write that sets the row's `updated_at` (the worker's fenced transactions, cancel, the
reconciler, a dataset deleted under it), so the rendered JSON is kept by (job id, updated_at): a poll costs
one indexed read of two columns (on Postgres without leaving the event loop), and the ORM load and the
rendering run, in a thread, only when the job changed.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, selectinload, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.async_reads import AsyncReader, CompiledQuery, NoPooledConnection
from api.jobs.schemas import JobOut
from api.queue.service import QueueStanding
from shared.db.models import Job, JobStatus, is_object_id
from shared.errors import NotFoundError

VERSION = select(Job.owner, Job.updated_at, Job.status, Job.created_at, Job.queue).where(
    Job.id == bindparam("job_id")
)


UNPLACED = b'"queue_position":null,"estimated_start_seconds":null'


def with_standing(body: bytes, standing: dict[str, float | int | None]) -> bytes:
    """The rendered body with the queued job's place filled in: the two top-level fields are rendered null
    next to each other (JobOut), and no other part of the body can hold those bytes unescaped, so a splice of
    the last occurrence does what parsing and dumping the whole body would, without that cost per poll."""
    at = body.rfind(UNPLACED)
    if at < 0:  # not rendered as expected: take the slow, sure path
        return json.dumps({**json.loads(body), **standing}).encode()
    placed = json.dumps(standing, separators=(",", ":")).encode()[1:-1]
    return body[:at] + placed + body[at + len(UNPLACED) :]


class JobViews:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        reader: AsyncReader | None,
        standing: QueueStanding,
        max_entries: int = 4096,
    ):
        self.sessions = sessions
        self.reader = reader
        self.standing = standing
        self.max_entries = max_entries
        self._version_sql = CompiledQuery(VERSION) if reader is not None else None
        self._bodies: OrderedDict[str, tuple[datetime, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    async def body(self, owner: str, job_id: str) -> bytes:
        """The job's JSON for `owner`; NotFoundError for a job that is missing or another owner's."""
        row = await self._version(job_id) if is_object_id(job_id) else None
        if row is None or row[0] != owner:  # another owner's job is indistinguishable from a missing one
            raise NotFoundError(f"no job {job_id}", details={"job_id": job_id})
        cached = self._bodies.get(job_id)
        body = cached[1] if cached is not None and cached[0] == row[1] else None
        if body is None:
            body = await run_in_threadpool(self._render, job_id)
        if row[2] == JobStatus.queued:  # its place in line changes while the job itself does not
            standing = self.standing.cached(job_id, row[4])  # the queue's table, from memory
            if standing is None:  # submitted since the last pass: its queue's table is recomputed
                standing = await run_in_threadpool(self.standing.standing, job_id, row[4])
            body = with_standing(body, standing)
        return body

    async def _version(self, job_id: str) -> tuple | None:
        if self.reader is not None and self._version_sql is not None:
            try:
                return await self.reader.first(self._version_sql, job_id=job_id)
            except NoPooledConnection:
                pass  # busy, or reconnecting after an outage: the thread path connects afresh
        return await run_in_threadpool(self._version_in_thread, job_id)

    def _version_in_thread(self, job_id: str) -> tuple | None:
        with self.sessions() as session:
            row = session.execute(VERSION, {"job_id": job_id}).first()
            return tuple(row) if row is not None else None

    def _render(self, job_id: str) -> bytes:
        with self.sessions() as session:
            job = session.get(Job, job_id, options=[selectinload(Job.artifacts)])
            if job is None:
                raise NotFoundError(f"no job {job_id}", details={"job_id": job_id})
            rendered = JobOut.of(job).model_dump_json().encode()
            self._put(job_id, job.updated_at, rendered)  # the version this body was rendered from
            return rendered

    def _put(self, job_id: str, version: datetime, body: bytes) -> None:
        with self._lock:
            self._bodies[job_id] = (version, body)
            self._bodies.move_to_end(job_id)
            while len(self._bodies) > self.max_entries:
                self._bodies.popitem(last=False)
