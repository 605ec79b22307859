"""The Celery app both sides share, and handing job ids to it. The API only sends task names; the worker
registers the tasks.

The broker is a doorbell, the database row is the truth: Celery carries just the job id, there is no result
backend, and a message that is lost, late or sent twice does no harm (the reconciler re-sends what the broker
lost; claiming a job is atomic, so a duplicate does nothing).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from kombu.transport import filesystem

from shared.settings import Settings

TRAIN_TASK = "lorabake.train_job"
log = logging.getLogger("lorabake.queue")


class FilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport (the embedded mode), each wait at most a quarter second: Celery's worker
    loop looks for a shutdown only between two waits, and asks for 2 s ones."""

    def drain_events(self, connection, timeout=None):  # noqa: ANN001, ANN201 - kombu's signature
        return super().drain_events(connection, timeout=None if timeout is None else min(timeout, 0.25))


def make_celery(settings: Settings) -> Celery:
    app = Celery("lorabake", broker=settings.broker_url, set_as_current=False)
    timeout = settings.broker_timeout_seconds
    transport_options: dict = {
        # Only needs to be long enough not to matter: leases and the reconciler bring back a dead worker's
        # job in about a minute; this is when Redis would hand the same message out once more.
        "visibility_timeout": settings.task_time_limit + 600,
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 5.0),  # above kombu's 1 s BRPOP, so an idle consumer never times out
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 10,
    }
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = dict(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            control_folder=str(folder / "control"),  # kombu's default is ./control, in the current directory
            store_processed=False,
        )
        app.conf.broker_transport = FilesystemTransport
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a pool child killed mid-job gets its message back at once
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_name,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a broker outage instead of exiting
        # Sending is best effort (the outbox): one quick retry, then the reconciler's turn.
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        worker_hijack_root_logger=False,
        worker_timer_precision=0.1,  # its thread sees a shutdown this soon (the default, 1 s, delays one)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_training(app: Celery, settings: Settings, job_id: str, queue: str | None = None) -> None:
    """To the job's named queue (None: the default one)."""
    app.send_task(TRAIN_TASK, args=[job_id], queue=queue or settings.queue_name)


class JobDispatcher:
    """Sends job ids to the broker, best effort. After a failed send it skips sending for `cooldown`
    seconds, so that requests made while the broker is down do not each wait for its timeout; the jobs
    they stored are sent by the reconciler once the broker is back."""

    def __init__(self, app: Celery, settings: Settings, cooldown: float = 5.0) -> None:
        self.app = app
        self.settings = settings
        self.cooldown = cooldown
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def cooling_down(self) -> bool:
        """A send failed a moment ago: the broker is taken to be down from this process."""
        return time.monotonic() < self._down_until

    def send(self, job_id: str, queue: str | None = None) -> bool:
        if self.cooling_down:
            return False
        try:
            enqueue_training(self.app, self.settings, job_id, queue)
        except Exception as exc:  # any broker failure: the job is stored, the reconciler sends it later
            with self._lock:
                self._down_until = time.monotonic() + self.cooldown
            log.warning(
                "could not send job %s to the broker (%s: %s); the reconciler will",
                job_id,
                type(exc).__name__,
                exc,
            )
            return False
        return True
