"""A worker's warm shutdown that ends in seconds: the running job hands itself back instead of being killed.

Celery's warm shutdown (SIGTERM, Ctrl-C) waits for the running job to end, which for training can take hours:
past the grace of whoever stops it the worker is killed, the job is cut off and, unless `serve` takes it back
at its next start, waits for its lease to run out and counts as an attempt. Instead, once the worker's duties
have stopped (no scheduler sends it another job, its heartbeat is gone), the main process raises a flag; the
job stops at its next step as for a cancel, publishes what it saved and goes back to the queue, to resume
from its last saved state, not counted as an attempt.

The flag is a byte of shared memory made before the pool forks: its children read it with no lock or signal.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import threading
from typing import Any

from celery.signals import worker_shutting_down

_flag = multiprocessing.RawValue("b", 0)


def request_stop() -> None:
    _flag.value = 1


def stop_requested() -> bool:
    return bool(_flag.value)


def stop_on_shutdown(duties: subprocess.Popen, wait_seconds: float = 5) -> None:
    """In the worker's main process, before Celery starts."""

    def stop_in_order() -> None:
        duties.terminate()
        # past the wait the job is handed back all the same (a scheduler may then send it here once more)
        with contextlib.suppress(subprocess.TimeoutExpired):
            duties.wait(timeout=wait_seconds)
        request_stop()

    def shutting_down(**_: Any) -> None:
        # Celery calls this in its signal handler and stops only after: wait elsewhere
        threading.Thread(target=stop_in_order, name="stop-job", daemon=True).start()

    worker_shutting_down.connect(shutting_down, weak=False)
