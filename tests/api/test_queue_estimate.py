"""The start estimate of a queued job, from the jobs ahead of it, the workers and the running jobs' ETAs."""

from __future__ import annotations

import pytest

from api.queue.service import estimate


@pytest.mark.parametrize(
    ("ahead", "workers", "etas", "typical", "expected"),
    [
        (0, 0, [], 60.0, None),  # no worker alive: nobody can say
        (0, 2, [30.0], 60.0, 0.0),  # a free worker takes it now
        (0, 1, [30.0], 60.0, 30.0),  # when the running job ends
        (1, 2, [50.0, 20.0], 60.0, 50.0),  # second in line: the second running job to end
        (2, 2, [50.0, 20.0], 60.0, 110.0),  # past the running ones: a typical run after the last ends
        (5, 2, [50.0, 20.0], 60.0, 170.0),
        (2, 2, [50.0, 20.0], None, None),  # that needs a typical run, and none is known yet
    ],
)
def test_estimates(ahead, workers, etas, typical, expected):
    assert estimate(ahead, workers, etas, typical) == expected
