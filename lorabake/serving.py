"""Running the API in this process (`lorabake api`, `lorabake serve`), and stopping it with one Ctrl-C.

uvicorn waits for every open connection before it shuts the app down, and a job page's event stream stays
open as long as the job runs: so the first SIGINT or SIGTERM also ends the event streams (the clients
reconnect with Last-Event-ID to the next server). `serve` tells its worker to stop at the same moment: a
warm shutdown, in which the running job hands itself back at its next step (worker/stopping.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
import uvicorn
from fastapi import FastAPI

from lorabake.logs import library_level

log = logging.getLogger("lorabake.serve")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ApiServer(uvicorn.Server):
    """uvicorn's server, which also calls `on_stop` when told to stop, and `on_listening` once it listens."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_stop: Callable[[], None],
        on_listening: Callable[[], None] | None = None,
        signalled: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self.on_listening = on_listening
        self.signalled = signalled  # a signal came before uvicorn took them over: stop at once

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.signalled():
            self.handle_exit(signal.SIGINT, None)
        await super().startup(sockets)
        if self.started and self.on_listening is not None:
            self.on_listening()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.on_stop()


def run_api(
    app: FastAPI,
    host: str,
    port: int,
    level: str,
    *,
    on_listening: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    graceful_seconds: int | None = None,
) -> None:
    """Until SIGINT or SIGTERM; `on_stop` is called at once then (from the signal handler), as the event
    streams end. `graceful_seconds`: how long other requests (an upload) may still take.
    Returns normally on a signal: uvicorn re-raises the one it caught once it is done, which would
    otherwise end this process (SIGTERM) or raise KeyboardInterrupt (SIGINT) before the caller's cleanup."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=library_level(level).lower(),
        # our middleware logs each request with its request id, so uvicorn's access log would only repeat it
        access_log=False,
        timeout_graceful_shutdown=graceful_seconds,
    )
    end_streams = app.state.lorabake.events.end_streams

    def stopping() -> None:
        end_streams()
        if on_stop is not None:
            on_stop()

    caught: list[int] = []  # also what uvicorn re-raises once done, for nothing to act on
    previous = {sig: signal.signal(sig, lambda sig, _: caught.append(sig)) for sig in STOP_SIGNALS}
    try:
        ApiServer(config, stopping, on_listening, signalled=lambda: bool(caught)).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class EmbeddedWorker:
    """`serve`'s worker process, in a process group of its own (with its pool children)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._told = False

    @property
    def stopping(self) -> bool:
        return self._told

    def tell_to_stop(self) -> None:
        """SIGTERM: Celery's warm shutdown, in which the running job hands itself back at its next step
        (worker/stopping.py). Once: a second SIGTERM would start it over."""
        if not self._told and self.proc.poll() is None:
            self._told = True
            self.proc.terminate()

    def stop(self, grace_seconds: float = 10) -> None:
        """Waits for the warm shutdown. When it outlasts the grace (a job between two steps for long, its
        model loading), or on another Ctrl-C, the whole process group is killed; the job cut off is queued
        again by the next `lorabake serve` and resumes from its last saved state."""
        proc = self.proc
        hurry: list[int] = []
        previous = {sig: signal.signal(sig, lambda sig, _: hurry.append(sig)) for sig in STOP_SIGNALS}
        try:
            self.tell_to_stop()
            started, said = time.monotonic(), False
            while proc.poll() is None and not hurry and time.monotonic() < started + grace_seconds:
                if not said and time.monotonic() > started + 5:  # an idle worker is gone by now
                    said = True
                    log.info(
                        "the worker's job has not reached its next step yet: it is stopped within %.0f s "
                        "(Ctrl-C: now) and resumes at the next start",
                        grace_seconds - 5,
                    )
                time.sleep(0.1)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def boxed(lines: list[str]) -> str:
    """Lines in a plain ASCII box (any terminal shows it), so they stand out from the log lines."""
    width = max(len(line) for line in lines)
    rule = "+" + "-" * (width + 2) + "+"
    return "\n".join([rule, *(f"| {line.ljust(width)} |" for line in lines), rule])


def announce_when_ready(
    lines: list[str], worker: EmbeddedWorker, ready_file: Path, timeout: float = 120
) -> None:
    """Prints `lines` boxed once the worker takes jobs (it creates `ready_file`): after every start-up line,
    so the address and key are the last thing on the screen. In a thread: the server goes on meanwhile."""

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while not ready_file.exists() and worker.proc.poll() is None and time.monotonic() < deadline:
            if worker.stopping:  # stopped before it was up: nothing to announce
                return
            time.sleep(0.1)
        if not ready_file.exists():
            code = worker.proc.poll()
            why = "not ready yet" if code is None else f"it exited with code {code}"
            log.error("the worker is not taking jobs (%s): see the lines above", why)
        click.echo("\n" + boxed(lines) + "\n")

    threading.Thread(target=wait, name="announce", daemon=True).start()
