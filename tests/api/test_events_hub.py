"""One poller per API process feeds every event stream: watchers of a job get its new events, each once,
including one whose id became visible after a later one; and watchers cost no queries of their own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from sqlalchemy import event as sa_event

from api.jobs.events import EventHub
from shared.db.models import Job, JobEvent
from shared.db.session import get_engine, session_factory


def make_job(url: str) -> str:
    job_id = uuid.uuid4().hex
    with session_factory(url)() as session:
        session.add(Job(id=job_id, owner="t", config={}, plan={}, dataset_key="k"))
        session.commit()
    return job_id


def add_events(url: str, job_id: str, *steps: int) -> None:
    with session_factory(url)() as session:
        for step in steps:
            session.add(JobEvent(job_id=job_id, type="progress", data={"step": step}))
        session.commit()


async def drain(queue: asyncio.Queue, count: int, timeout: float = 10) -> list[int]:
    got = []
    while len(got) < count:
        got.append((await asyncio.wait_for(queue.get(), timeout)).data["step"])
    return got


def test_watchers_get_their_jobs_new_events_from_one_poller(pg_url):
    a, b = make_job(pg_url), make_job(pg_url)
    add_events(pg_url, a, 0)  # before anyone watched: the stream's replay serves it, not the hub
    selects = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if "FROM job_events" in statement:
            selects.append(statement)

    engine = get_engine(pg_url)
    sa_event.listen(engine, "before_cursor_execute", count)

    async def scenario() -> tuple[list[list[int]], list[int], int]:
        hub = EventHub(session_factory(pg_url), interval=0.1)
        async with contextlib.AsyncExitStack() as stack:
            watchers_a = [await stack.enter_async_context(hub.watch(a)) for _ in range(50)]
            watcher_b = await stack.enter_async_context(hub.watch(b))
            await asyncio.to_thread(add_events, pg_url, a, 1, 2)
            await asyncio.to_thread(add_events, pg_url, b, 10)
            await asyncio.to_thread(add_events, pg_url, a, 3)
            got_a = [await drain(q, 3) for q in watchers_a]
            got_b = await drain(watcher_b, 1)
            polls = len(selects)
            await asyncio.sleep(1.0)
            per_second = len(selects) - polls
            assert all(q.empty() for q in [*watchers_a, watcher_b])  # each event came once
        await hub.close()
        return got_a, got_b, per_second

    try:
        got_a, got_b, per_second = asyncio.run(scenario())
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    assert all(steps == [1, 2, 3] for steps in got_a)
    assert got_b == [10]
    assert per_second <= 12  # ~10 polls a second at interval 0.1, whatever the number of watchers


def test_an_event_committed_after_a_later_one_is_still_delivered(pg_url):
    job_id = make_job(pg_url)

    async def scenario() -> list[int]:
        hub = EventHub(session_factory(pg_url), interval=0.1)
        async with hub.watch(job_id) as queue:
            # id N is taken by a transaction that commits only after the one holding id N+1
            slow = session_factory(pg_url)()
            slow.add(JobEvent(job_id=job_id, type="progress", data={"step": 1}))
            slow.flush()
            await asyncio.to_thread(add_events, pg_url, job_id, 2)
            first = await drain(queue, 1)
            slow.commit()
            slow.close()
            second = await drain(queue, 1)
            await asyncio.sleep(0.3)
            assert queue.empty()
        await hub.close()
        return first + second

    assert asyncio.run(scenario()) == [2, 1]
