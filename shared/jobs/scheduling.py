"""The order queued jobs start in: a pure function, so the scheduler that sends jobs and the API that shows
a job's place in line agree by construction.

The rules, within one queue:
- a key's `priority` (default 0) ranks it: a higher-priority key's jobs start first (an admin's ranking of
  tenants, so it is strict);
- among jobs of equal priority, owners take turns: the next job is the oldest of the owner with the fewest
  jobs in flight (running, or sent to a worker and not yet started) and, among those, whose last job
  started longest ago (never: first). So one owner's hundred jobs never starve another owner's one, even
  on a single worker;
- a key's `max_running` caps its jobs in flight (across all queues); its jobs past the cap wait, without
  holding up anyone else's.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Waiting:
    """A queued job not yet sent to a worker, with what the rules need of its key."""

    job_id: str
    owner: str
    key_id: str | None
    created_at: datetime
    priority: int = 0
    max_running: int | None = None


@dataclass
class InFlight:
    """Jobs running or sent and not yet started, counted by owner (in this queue) and by key (anywhere),
    and when each owner's last job in this queue was sent to a worker (epoch seconds; absent: never)."""

    by_owner: Counter[str]
    by_key: Counter[str]
    last_turn: dict[str, float] = field(default_factory=dict)


NEVER = float("-inf")
SIMULATED = 1e15  # turns taken while ordering come after every real one


def _blocked(job: Waiting, by_key: Counter[str]) -> bool:
    return job.max_running is not None and job.key_id is not None and by_key[job.key_id] >= job.max_running


def _one_round(
    jobs: list[Waiting], in_flight: InFlight, limit: int | None
) -> tuple[list[Waiting], list[Waiting]]:
    """(jobs in start order, up to `limit`; jobs their key's cap holds back). Owners take turns through a
    heap keyed on (-priority of their next job, their jobs in flight, their last turn, the job's age)."""
    by_owner, by_key = Counter(in_flight.by_owner), Counter(in_flight.by_key)
    last_turn = dict(in_flight.last_turn)
    lines: dict[str, deque[Waiting]] = defaultdict(deque)
    for job in sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.job_id)):
        lines[job.owner].append(job)

    def entry(owner: str) -> tuple:
        head = lines[owner][0]
        return (-head.priority, by_owner[owner], last_turn.get(owner, NEVER), head.created_at, owner)

    heap = [entry(owner) for owner in lines]
    heapq.heapify(heap)
    started: list[Waiting] = []
    held: list[Waiting] = []
    while heap and (limit is None or len(started) < limit):
        owner = heapq.heappop(heap)[-1]
        line = lines[owner]
        job = line.popleft()
        if _blocked(job, by_key):
            held.append(job)
        else:
            started.append(job)
            by_owner[owner] += 1
            last_turn[owner] = SIMULATED + len(started)
            if job.key_id is not None:
                by_key[job.key_id] += 1
        if line:
            heapq.heappush(heap, entry(owner))
    return started, held


def next_to_start(jobs: Iterable[Waiting], in_flight: InFlight, free_slots: int) -> list[Waiting]:
    """The jobs to send now: at most `free_slots`, none past its key's `max_running`."""
    if free_slots <= 0:
        return []
    return _one_round(list(jobs), in_flight, free_slots)[0]


def start_order(jobs: Iterable[Waiting], in_flight: InFlight) -> list[Waiting]:
    """Every waiting job in the order it is expected to start. Jobs a key's cap holds back come after the
    rest, in rounds (as if the key's jobs in flight had ended): an estimate, as when they end is unknown."""
    order: list[Waiting] = []
    remaining = list(jobs)
    while remaining:
        started, held = _one_round(remaining, in_flight, None)
        if not started:  # every job left is capped: treat its keys' jobs in flight as ended
            in_flight = InFlight(in_flight.by_owner, Counter(), in_flight.last_turn)
            started, held = _one_round(remaining, in_flight, None)
            if not started:  # a cap of 0 holds its jobs for good: list them last
                order.extend(held)
                break
        order.extend(started)
        remaining = held
        turns = {**in_flight.last_turn, **{j.owner: SIMULATED + n for n, j in enumerate(order)}}
        in_flight = InFlight(in_flight.by_owner + Counter(j.owner for j in started), Counter(), turns)
    return order
