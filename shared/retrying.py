"""Retrying through outages: exponential backoff with jitter, bounded in time (stamina, on tenacity).

Only outages (shared.outages) are retried; any other error, and an outage that outlasts the bound, is raised.
An outage that outlasts the bound is raised as OutageOutlasted, so callers can tell "the server stayed down"
(hand the job back to the queue) from the job's own faults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import stamina

from shared.outages import Service, outage_of

T = TypeVar("T")


class OutageOutlasted(Exception):  # noqa: N818 - it is the condition's name
    """A server stayed unavailable for longer than the caller was willing to retry."""

    def __init__(self, service: Service, what: str, bound: float) -> None:
        super().__init__(f"{service} unavailable for more than {bound:.0f}s while trying to {what}")
        self.service = service


def retry_outages(what: str, call: Callable[[], T], *, bound: float, wait_max: float = 5.0) -> T:
    """`call()`, retried while it fails with an outage, for at most `bound` seconds in all."""
    try:
        for attempt in stamina.retry_context(
            on=lambda exc: outage_of(exc) is not None,
            attempts=None,
            timeout=bound,
            wait_initial=0.2,
            wait_max=wait_max,
        ):
            with attempt:
                return call()
    except Exception as exc:
        service = outage_of(exc)
        if service is None:
            raise
        raise OutageOutlasted(service, what, bound) from exc
    raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover
