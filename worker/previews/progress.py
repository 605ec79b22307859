"""A preview job's progress in denoising steps, as training counts its optimizer steps: one image of 30
steps is 30 steps of progress, so a slow image moves the bar (and the ETA) while it is drawn instead of
showing "0 / 1" for ten minutes. The columns are the job row's own (step, total_steps, steps_per_second,
eta_seconds), so the page, the CLI and the queue's estimate read a preview as they read training."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class DenoisingProgress:
    def __init__(
        self,
        total: int,
        report: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.report = report
        self.clock = clock
        self.done = 0  # steps of the images finished
        self.step = 0  # ... plus those of the image being drawn
        self.started: float | None = None  # the first image's start: loading the model is not a step

    def begin(self) -> None:
        """An image starts; the first one starts the clock."""
        if self.started is None:
            self.started = self.clock()
        self._send()

    def at(self, steps: int, index: int, of: int) -> None:
        """After the pipeline's `index`-th of `of` scheduler steps of an image of `steps` denoising steps
        (`of` differs from `steps` for second-order samplers such as Heun, which call the model twice)."""
        self.step = self.done + min(steps, steps * index // max(of, 1))
        self._send()

    def finished(self, steps: int) -> None:
        """An image was drawn (its VAE decode included)."""
        self.done += steps
        self.step = self.done
        self._send()

    def _send(self) -> None:
        rate = eta = None
        elapsed = self.clock() - self.started if self.started is not None else 0.0
        if self.step > 0 and elapsed > 0:
            rate = self.step / elapsed
            eta = max(0, self.total - self.step) / rate
        self.report(
            {"step": self.step, "total_steps": self.total, "steps_per_second": rate, "eta_seconds": eta}
        )
