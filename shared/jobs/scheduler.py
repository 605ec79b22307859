"""The scheduler: hands queued jobs to the broker as workers have room for them, in the order that
shared/jobs/scheduling.py sets (key priority, owners taking turns, per-key `max_running`).

Jobs wait in the database, not in the broker, because the broker hands its messages out first in, first
out: an order fixed at submission could never let a later owner's job pass a backlog. So a queue is sent
only as many jobs as its live workers have free slots (their heartbeats say how many they run at once),
counting the jobs already running or sent and not yet started.

Each pass is cheap when nothing waits (one read). It runs every `schedule_interval_seconds` in every API
process and beside every worker, and right after each submission; a lock in the database lets one process
act at a time. A job is marked sent (`enqueued_at`) only after the broker took it; a process that cannot
reach the broker gives the lock up, so one that can takes over, and nothing it could not send is marked.
A job the broker later loses is the reconciler's.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import ApiKey, Job, JobStatus, as_utc, utcnow
from shared.db.service_lock import release_lock, try_lock
from shared.jobs.scheduling import InFlight, Waiting, next_to_start
from shared.jobs.state import RUNNING
from shared.jobs.workers import live_workers, slots_serving
from shared.outages import is_outage
from shared.queue import JobDispatcher
from shared.settings import Settings

log = logging.getLogger("lorabake.scheduler")
LOCK_NAME = "scheduler"


def waiting_to_be_sent() -> ColumnElement[bool]:
    """Queued jobs no worker has been sent yet (new, handed back, or requeued after a lost worker)."""
    return and_(
        Job.status == JobStatus.queued,
        Job.enqueued_at.is_(None),
        Job.lease_token.is_(None),
        Job.cancel_requested.is_(False),
    )


def in_flight() -> ColumnElement[bool]:
    """Jobs that hold a worker slot: running, or sent and not yet started."""
    sent = and_(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None))
    return or_(Job.status.in_([s.value for s in RUNNING]), sent)


def in_queue(settings: Settings, queue: str) -> ColumnElement[bool]:
    """Jobs of a queue; those made before named queues (no queue) are the default one's."""
    named = Job.queue == queue
    return named | Job.queue.is_(None) if queue == settings.queue_name else named


def last_turns(session: Session, settings: Settings, queue: str, owners: set[str]) -> dict[str, float]:
    """When each owner's last job in the queue was sent to a worker (epoch seconds), over the last day."""
    if not owners:
        return {}
    since = utcnow() - timedelta(days=1)
    rows = session.execute(
        select(Job.owner, func.max(Job.enqueued_at))
        .where(in_queue(settings, queue), Job.owner.in_(owners), Job.enqueued_at >= since)
        .group_by(Job.owner)
    ).all()
    return {owner: as_utc(at).timestamp() for owner, at in rows if at is not None}


def key_rules(limits: dict | None) -> tuple[int, int | None]:
    """(priority, max_running) from a key's stored limits; jobs with no key rank 0 with no cap."""
    limits = limits or {}
    priority, cap = limits.get("priority"), limits.get("max_running")
    return (int(priority) if priority is not None else 0, int(cap) if cap is not None else None)


@dataclass(frozen=True)
class Flight:
    queue: str
    owner: str
    key_id: str | None


def count_in_flight(flights: Iterable[Flight], queue: str, turns: dict[str, float]) -> InFlight:
    """Owners are counted in this queue (they take turns per queue); keys everywhere (their cap is theirs)."""
    flights = list(flights)
    return InFlight(
        by_owner=Counter(f.owner for f in flights if f.queue == queue),
        by_key=Counter(f.key_id for f in flights if f.key_id is not None),
        last_turn=turns,
    )


class Scheduler:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], dispatcher: JobDispatcher, holder: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.holder = holder
        self._pass_lock = threading.Lock()  # one pass at a time in this process (a thread and requests)

    def run_once(self) -> list[str]:
        """One pass; the ids of the jobs sent. Never raises for an outage (the next pass tries again)."""
        if not self._pass_lock.acquire(blocking=False):
            return []  # a pass is under way in this process: it sees the same jobs
        try:
            return self._pass()
        except Exception as exc:
            if is_outage(exc):
                return []
            raise
        finally:
            self._pass_lock.release()

    def _queue_of(self, queue: str | None) -> str:
        return queue or self.settings.queue_name  # jobs made before named queues: the default one

    def _pass(self) -> list[str]:
        ttl = max(10.0, 3 * self.settings.schedule_interval_seconds)
        with self.sessions() as session:
            if self.dispatcher.cooling_down:  # this process cannot reach the broker: leave it to another
                return []
            if session.scalar(select(Job.id).where(waiting_to_be_sent()).limit(1)) is None:
                return []
            if not try_lock(session, LOCK_NAME, self.holder, ttl_seconds=ttl):
                return []
            workers = live_workers(session, self.settings)
            rows = session.execute(select(Job.queue, Job.owner, Job.api_key_id).where(in_flight())).all()
            flights = [Flight(self._queue_of(q), owner, key) for q, owner, key in rows]
            served = {q for worker in workers for q in worker.queues}
            free = {q: slots_serving(workers, q) - sum(f.queue == q for f in flights) for q in served}
            free = {q: n for q, n in free.items() if n > 0}
            if not free:
                return []
            waiting = self._waiting(session, set(free))
            owners = {q: {job.owner for job in jobs} for q, jobs in waiting.items()}
            turns = {q: last_turns(session, self.settings, q, names) for q, names in owners.items()}
        sent: list[str] = []
        for queue, slots in sorted(free.items()):
            in_flight_now = count_in_flight(flights, queue, turns.get(queue, {}))
            for job in next_to_start(waiting.get(queue, []), in_flight_now, slots):
                if not self.dispatcher.send(job.job_id, queue):
                    self._give_up_lock()  # another process may reach the broker: let it take over
                    return sent
                self._mark_sent(job.job_id)
                sent.append(job.job_id)
                flights.append(Flight(queue, job.owner, job.key_id))  # its key's cap counts it at once
        return sent

    def _waiting(self, session: Session, queues: set[str]) -> dict[str, list[Waiting]]:
        in_queues = or_(*(in_queue(self.settings, q) for q in sorted(queues)))
        rows = session.execute(
            select(Job.id, Job.owner, Job.api_key_id, Job.created_at, Job.queue, ApiKey.limits)
            .outerjoin(ApiKey, ApiKey.id == Job.api_key_id)
            .where(waiting_to_be_sent(), in_queues)
        ).all()
        by_queue: dict[str, list[Waiting]] = {}
        for job_id, owner, key_id, created_at, queue, limits in rows:
            priority, cap = key_rules(limits)
            by_queue.setdefault(self._queue_of(queue), []).append(
                Waiting(job_id, owner, key_id, created_at, priority=priority, max_running=cap)
            )
        return by_queue

    def _give_up_lock(self) -> None:
        try:
            with self.sessions() as session:
                release_lock(session, LOCK_NAME, self.holder)
        except Exception as exc:  # it expires by itself
            log.warning("scheduler: could not release its lock (%s)", type(exc).__name__)

    def _mark_sent(self, job_id: str) -> None:
        """If this write fails the job is sent again by a later pass: harmless, since claiming is atomic."""
        try:
            with self.sessions() as session:
                session.execute(
                    update(Job)
                    .execution_options(synchronize_session=False)  # rows are re-read, not patched
                    .where(Job.id == job_id, Job.status == JobStatus.queued)
                    .values(enqueued_at=utcnow())
                )
                session.commit()
        except Exception as exc:
            log.warning("job %s: sent, but could not mark it sent (%s)", job_id, type(exc).__name__)
