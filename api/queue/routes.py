"""/v1/queue: how busy the service is, and where the caller's own jobs stand."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import JobsRead, State
from api.schemas import error_responses
from api.state import AppState
from shared.broker_inspect import queue_depth
from shared.db.models import Job, JobStatus
from shared.jobs.routing import known_queues
from shared.jobs.state import RUNNING
from shared.jobs.workers import LiveWorker, live_workers, workers_alive

router = APIRouter(prefix="/v1/queue", tags=["queue"])
_ERRORS = error_responses(401, 403, 503)


class QueueCounts(BaseModel):
    queued: int = Field(description="jobs waiting to start")
    running: int = Field(description="jobs a worker has (preparing, training, rendering, uploading)")


class GpuCount(BaseModel):
    name: str = Field(description="as nvidia-smi names it, e.g. 'NVIDIA GeForce RTX 4090'")
    memory_mb: int = Field(description="each card's total memory (MiB)")
    count: int = Field(description="cards of this kind among the queue's live workers")


def gpu_counts(workers: list[LiveWorker], queue: str) -> list[GpuCount]:
    counts = Counter(gpu for worker in workers if queue in worker.queues for gpu in worker.gpus)
    return [GpuCount(name=n, memory_mb=m, count=c) for (n, m), c in sorted(counts.items())]


class NamedQueue(BaseModel):
    name: str
    queued: int
    running: int
    in_broker: int | None = Field(description="messages waiting in the broker; null when it cannot be read")
    workers: int = Field(description="live workers that take jobs from it")
    gpus: list[GpuCount] = Field(
        default_factory=list, description="the cards of those workers, as they report them (none: CPU only)"
    )


class QueueOut(BaseModel):
    name: str = Field(description="the default queue (jobs that name none, and unrouted model families)")
    queued: int = Field(description="jobs waiting to start, in every queue")
    running: int
    in_broker: int | None = Field(description="messages waiting in the default queue; null: cannot be read")
    workers_alive: int = Field(description="workers whose heartbeat is recent")
    yours: QueueCounts = Field(description="the same counts for your own jobs")
    queues: list[NamedQueue] = Field(description="each queue this deployment knows (routes, live workers)")


def _counts(state: AppState, owner: str) -> tuple[QueueCounts, QueueCounts, int]:
    """(everyone's, the owner's) queued and running counts, and the workers alive."""
    waiting = [JobStatus.queued, *RUNNING]

    def by_status(session: Session, *where: ColumnElement[bool]) -> QueueCounts:
        rows = session.execute(
            select(Job.status, func.count(Job.id)).where(Job.status.in_(waiting), *where).group_by(Job.status)
        ).all()
        queued = sum(n for status, n in rows if status == JobStatus.queued)
        return QueueCounts(queued=queued, running=sum(n for _, n in rows) - queued)

    with state.sessions() as session:
        everyone, yours = by_status(session), by_status(session, Job.owner == owner)
        return everyone, yours, workers_alive(session, 3 * state.settings.lease_renew_seconds)


def _per_queue(state: AppState) -> list[NamedQueue]:
    settings = state.settings
    with state.sessions() as session:
        live = live_workers(session, settings)
        serving = [set(worker.queues) for worker in live]  # the queues each live worker consumes
        grouped = session.execute(
            select(Job.queue, Job.status, func.count(Job.id))
            .where(Job.status.in_([JobStatus.queued, *RUNNING]))
            .group_by(Job.queue, Job.status)
        ).all()
    rows = [(queue or settings.queue_name, status, n) for queue, status, n in grouped]  # None: the default
    names = known_queues(settings, {q for qs in serving for q in qs})
    lines = []
    for name in names:
        queued = sum(n for q, status, n in rows if q == name and status == JobStatus.queued)
        running = sum(n for q, status, n in rows if q == name and status != JobStatus.queued)
        try:
            depth = queue_depth(settings, name)
        except Exception:  # the broker is down: the database's counts still answer
            depth = None
        workers = sum(1 for qs in serving if name in qs)
        lines.append(
            NamedQueue(
                name=name,
                queued=queued,
                running=running,
                in_broker=depth,
                workers=workers,
                gpus=gpu_counts(live, name),
            )
        )
    return lines


@router.get("", response_model=QueueOut, responses=_ERRORS, operation_id="get_queue")
async def get_queue(owner: JobsRead, state: State) -> QueueOut:
    """Jobs waiting and running (everyone's, as counts; yours apart), broker depth, workers alive. A
    queued job's own place in line is in GET /v1/jobs/{id} (`queue_position`, `estimated_start_seconds`)."""
    everyone, yours, alive = await run_in_threadpool(_counts, state, owner)
    queues = await run_in_threadpool(_per_queue, state)
    default = next(q for q in queues if q.name == state.settings.queue_name)
    return QueueOut(
        name=default.name,
        queued=everyone.queued,
        running=everyone.running,
        in_broker=default.in_broker,
        workers_alive=alive,
        yours=yours,
        queues=queues,
    )
