"""The expected starts of a queue's line, from its slots, the running jobs' ends and each queued job's own
predicted run time."""

from __future__ import annotations

import pytest

from api.queue.service import expected_starts


@pytest.mark.parametrize(
    ("slots", "running", "durations", "expected"),
    [
        (0, [], [60.0], [None]),  # no worker serves the queue: nobody can say
        (2, [30.0], [60.0, 60.0], [0.0, 30.0]),  # a free slot takes the first now; the second when 30 s end
        (1, [30.0], [60.0, 10.0], [30.0, 90.0]),  # each takes the slot for its own predicted time
        (2, [50.0, 20.0], [60.0, 60.0, 60.0], [20.0, 50.0, 80.0]),
        (2, [50.0, 20.0], [5.0, 100.0, 7.0], [20.0, 25.0, 50.0]),  # short jobs ahead free the slot soon
        (1, [None], [60.0], [None]),  # the running job's end is unknown: so is everything behind it
        (2, [None], [60.0, 60.0], [0.0, 60.0]),  # ... but the free slot still works
        (1, [10.0], [None, 60.0], [10.0, None]),  # a job ahead with no prediction: its successors unknown
        (1, [30.0, 5.0], [60.0], [5.0]),  # a worker counted in two queues: this one gets its first free slot
    ],
)
def test_expected_starts(slots, running, durations, expected):
    assert expected_starts(slots, running, durations) == expected
