"""A daemon thread that calls a function every N seconds until stopped; the duty's errors are logged, never
raised, so one bad pass (a server blinked) does not end the loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("lorabake.periodic")


class PeriodicThread:
    def __init__(self, name: str, interval: float, duty: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.duty = duty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> PeriodicThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.duty()
            except Exception:
                log.exception("%s: this pass failed; the next one runs in %.0fs", self.name, self.interval)
            self._stop.wait(self.interval)
