"""The queue through the client and `lorabake watch`: another owner's job waiting behind the long job (see
`queue_behind` in conftest), its place in line, the counts, and the per-key limit's 429."""

from __future__ import annotations

import re

from lorabake.client import QueueCounts
from tests.client.conftest import CanceledRun


def test_a_job_behind_a_running_one_knows_its_place(canceled_job: CanceledRun):
    seen = canceled_job.queue
    assert seen.queued.status == "queued"
    assert seen.queued.queue_position == 1  # nothing else waits: it is next
    # one worker alive and busy: it starts when the running job ends, which has an ETA (or 0 without one)
    assert seen.queued.estimated_start_seconds is not None and seen.queued.estimated_start_seconds >= 0
    assert seen.after_cancel.status == "canceled"
    assert (seen.after_cancel.queue_position, seen.after_cancel.estimated_start_seconds) == (None, None)


def test_queue_counts_everyone_and_yours_apart(canceled_job: CanceledRun):
    seen = canceled_job.queue
    assert seen.tenant_queue.yours == QueueCounts(queued=1, running=0)
    assert seen.admin_queue.yours == QueueCounts(queued=0, running=1)  # the long job is the embedded owner's
    for queue in (seen.tenant_queue, seen.admin_queue):
        assert (queue.queued, queue.running) == (1, 1)  # everyone's: the same for both keys
        assert queue.workers_alive == 1 and queue.name
    assert seen.tenant_queue_after_cancel.yours == QueueCounts(queued=0, running=0)


def test_past_max_queued_a_submission_is_a_429_with_retry_after(canceled_job: CanceledRun):
    error = canceled_job.queue.over_limit
    assert (error.status, error.code) == (429, "too_many_queued")
    assert error.details == {"limit": "max_queued", "value": 1}
    assert error.retry_after is not None and error.retry_after > 0
    assert canceled_job.queue.submissions_sent == 2  # a refusal (429) is never retried, even with Retry-After
    assert canceled_job.queue.tenant_jobs_after_refusal == 1  # the refused one stored nothing


def test_watch_shows_a_queued_jobs_place_in_line(canceled_job: CanceledRun):
    seen = canceled_job.queue
    assert seen.watch_returncode == 3, (seen.watch_stdout, seen.watch_stderr)  # then it was canceled
    lines = seen.watch_stdout.splitlines()
    assert lines[0] == "status: queued", lines
    assert re.fullmatch(r"queued: position 1, starts in ~\d+(s|m\d\ds)", lines[1]), lines
    assert "status: canceled" in lines
    assert f"job {seen.queued.id} was canceled" in seen.watch_stderr
