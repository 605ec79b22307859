"""The worker's metrics port, served from its duties process (see worker/metrics/__init__.py).

A plain WSGI server in a daemon thread (prometheus-client's own), behind the same token as the API's
/metrics when LORABAKE_METRICS_TOKEN is set. A port that cannot be opened is logged and skipped: the
heartbeat and the reconciler, which share the process, matter more.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from shared.settings import Settings
from worker.metrics.process_dir import VARIABLE

log = logging.getLogger("lorabake.worker")
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def forget_dead_processes(folder: Path) -> None:
    """Drops the live-gauge files of processes that are gone: a child that ended, or was killed, never says
    so itself. Counter files stay, so what those children counted is kept."""
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(folder))


class WorkerProcessesCollector(Collector):
    """What every process of this worker wrote, summed, once the files of dead processes are dropped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files = MultiProcessCollector(None, path=str(folder))
        self._lock = threading.Lock()  # a scrape must not read a file another one is removing

    def collect(self) -> Iterable[Any]:
        with self._lock:
            forget_dead_processes(self.folder)
            return self._files.collect()


def token_required(app: WsgiApp, token: str) -> WsgiApp:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized", [("WWW-Authenticate", "Bearer"), ("Content-Type", "text/plain")]
            )
            return [b"send the metrics token as 'Authorization: Bearer TOKEN'\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """A line per scrape would drown the duties process' log."""


def serve_worker_metrics(settings: Settings, folder: str | None = None) -> WSGIServer | None:
    """Starts serving the processes' files in `folder` (default: the one `lorabake worker` prepared) when
    the port is set; None otherwise."""
    folder = folder or os.environ.get(VARIABLE)
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    if not port or not folder:
        return None
    import worker.metrics.job  # noqa: F401 - its outcome counters are series, at 0, before any job ran

    registry = CollectorRegistry()
    registry.register(WorkerProcessesCollector(Path(folder)))
    app: WsgiApp = make_wsgi_app(registry)
    if settings.metrics_token:
        app = token_required(app, settings.metrics_token)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("WorkerMetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    except OSError as exc:
        log.error("worker metrics: cannot listen on %s:%s (%s); going on without them", host, port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info("worker metrics on http://%s:%s/metrics", host, port)
    return server
