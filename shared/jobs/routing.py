"""Which named queue a job goes to: the one it asks for, else its model family's route, else the default.

Workers consume the queues they are started with (`lorabake worker --queues sdxl-24gb`), so a queue is a
class of GPU. A job may only name a queue this deployment knows: the default, a route's, or one a live
worker serves; anything else would wait forever.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shared.errors import LorabakeError
from shared.settings import Settings

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def known_queues(settings: Settings, served: Iterable[str]) -> list[str]:
    return sorted({settings.queue_name, *settings.queue_routes.values(), *served})


def queue_for(settings: Settings, family: str | None, requested: str | None, served: Iterable[str]) -> str:
    """The job's queue; a 422 naming `queue` for one this deployment does not know."""
    if requested is None or requested == "":
        return settings.queue_routes.get(family or "", settings.queue_name)
    known = known_queues(settings, served)
    if not isinstance(requested, str) or not QUEUE_NAME.match(requested) or requested not in known:
        raise LorabakeError(
            f"queue {requested!r} is not one this deployment has; queues are {', '.join(known)}",
            code="unknown_queue",
            details={"field": "queue", "queues": known},
            status_code=422,
        )
    return requested
