"""Live job events for every stream an API process serves, from one shared poller.

Each SSE connection used to query the database twice a second; now one task per process reads the new rows
of `job_events` (all jobs at once) every `interval` and hands each to the streams watching its job, so a
thousand watchers cost what one does. The database stays the source: a stream replays from it first
(`Last-Event-ID`), and the embedded mode needs no Redis.

Event ids are assigned when a row is inserted, not when it is committed, so a later id can become visible
before an earlier one (two writers of one job commit in the other order). The poller remembers the ids it
skipped over and looks for them again for `gap_seconds` before taking them for rolled back.

When the server stops, `end_streams` hands every watcher `None`: uvicorn waits for open connections before it
shuts the app down, so a stream left open would hold the shutdown forever. Clients reconnect with
`Last-Event-ID` to the next server and miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from shared.db.models import JobEvent

log = logging.getLogger("lorabake.api")


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    type: str
    data: dict[str, Any]


def event_of(row: JobEvent) -> Event:
    return Event(row.id, row.job_id, row.type, row.data)


class EventHub:
    def __init__(self, sessions: sessionmaker[Session], interval: float = 0.5, gap_seconds: float = 10.0):
        self.sessions = sessions
        self.interval = interval
        self.gap_seconds = gap_seconds
        self._watchers: dict[str, set[asyncio.Queue[Event | None]]] = {}
        self._task: asyncio.Task | None = None
        self._cursor: int | None = None  # the highest id handed out
        self._gaps: dict[int, float] = {}  # ids below the cursor not seen yet -> when first missed
        self._loop: asyncio.AbstractEventLoop | None = None  # the streams' loop, for end_streams
        self._ending = False

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Queue[Event | None]]:
        """A queue that receives the job's new events, then `None` if the server stops. Watch first, then
        replay from the database: an event can then arrive twice (the caller skips ids it sent) but never
        be missed."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._watchers.setdefault(job_id, set()).add(queue)
        if self._ending:  # a stream opened while the server stops (a client reconnecting) ends at once
            queue.put_nowait(None)
        if self._task is None or self._task.done():
            if self._cursor is None:
                self._cursor = await run_in_threadpool(self._max_id)
            self._task = asyncio.create_task(self._run(), name="job-events-poller")
        try:
            yield queue
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[job_id]

    def end_streams(self) -> None:
        """The server is stopping: every stream ends now, and any opened from now on at once. Safe to call
        from a signal handler or another thread."""
        self._ending = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._end_watches)

    def _end_watches(self) -> None:
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    # -- the poller ---------------------------------------------------------------------------------------
    async def _run(self) -> None:
        while self._watchers:
            try:
                rows = await run_in_threadpool(self._fetch)
            except Exception as exc:  # the database blinked: streams stay open (keep-alives), we retry
                log.warning("event poller: %s: %s", type(exc).__name__, exc)
                rows = []
            for event in self._accept(rows):
                for queue in tuple(self._watchers.get(event.job_id, ())):
                    queue.put_nowait(event)
            await asyncio.sleep(self.interval)
        # nobody watches: start afresh at the newest id next time (new watchers replay from the database)
        self._cursor = None
        self._gaps.clear()

    def _max_id(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.max(JobEvent.id))) or 0

    def _fetch(self) -> list[Event]:
        floor = min(self._gaps) - 1 if self._gaps else self._cursor or 0
        with self.sessions() as session:
            rows = session.scalars(
                select(JobEvent).where(JobEvent.id > floor).order_by(JobEvent.id).limit(2000)
            )
            return [event_of(row) for row in rows]

    def _accept(self, rows: list[Event]) -> list[Event]:
        """The rows not handed out before; records the ids skipped over as gaps."""
        now = time.monotonic()
        cursor = self._cursor or 0
        fresh = []
        for event in rows:
            if event.id in self._gaps:
                del self._gaps[event.id]
            elif event.id > cursor:
                for missing in range(cursor + 1, min(event.id, cursor + 1000)):
                    self._gaps.setdefault(missing, now)
                cursor = event.id
            else:
                continue  # handed out already
            fresh.append(event)
        self._cursor = cursor
        for missing, since in list(self._gaps.items()):
            if now - since > self.gap_seconds:
                del self._gaps[missing]
        return fresh
