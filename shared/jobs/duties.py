"""What runs beside a worker, in a process of its own: the worker's heartbeat (with its slots), its report of
the base models it has, a reconciler, the scheduler, the retention sweeper and the webhook dispatcher
(shared/webhooks).

`lorabake worker` starts it (`lorabake worker-duties --parent PID`) and it ends when that worker process
is gone, so a worker host that dies takes its heartbeat with it, or when that worker starts its shutdown
(`stop`), so no job is sent to it any more.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta

from shared.catalogue.records import forget_unseen_models
from shared.catalogue.reporting import ModelReporter
from shared.db.session import session_factory
from shared.gpu_inventory import local_gpus
from shared.jobs.reconciler import Reconciler
from shared.jobs.scheduler import Scheduler
from shared.jobs.sweeper import start_retention_sweeper
from shared.jobs.workers import forget_stale_workers, forget_worker, record_heartbeat, worker_id
from shared.outages import is_outage
from shared.queue import JobDispatcher, make_celery
from shared.settings import Settings
from shared.storage import build_store
from shared.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger("lorabake.worker")


def build_reconciler(settings: Settings, holder: str) -> Reconciler:
    sessions = session_factory(settings.database_url, settings.engine_options)
    dispatcher = JobDispatcher(make_celery(settings), settings)
    return Reconciler(settings, sessions, dispatcher, build_store(settings), holder=holder)


def run_worker_duties(
    settings: Settings,
    parent: int,
    queues: list[str] | None = None,
    slots: int = 1,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    wid = worker_id(parent)
    reconciler = build_reconciler(settings, holder=f"worker:{wid}")
    sessions = reconciler.sessions
    scheduler = Scheduler(settings, sessions, reconciler.dispatcher, holder=f"worker:{wid}")
    schedule_every = settings.schedule_interval_seconds
    next_schedule = 0.0
    models = ModelReporter(settings, sessions, wid)
    webhooks = WebhookDispatcher(settings, sessions, build_store(settings)).start()
    beat_every = settings.lease_renew_seconds
    gpus = local_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))  # the cards its jobs train on
    reconcile_every = settings.reconcile_interval_seconds
    next_beat = next_reconcile = 0.0
    # a thread of its own: a pass deleting many objects must not hold up the heartbeat
    sweeper = start_retention_sweeper(settings, sessions, build_store(settings), f"worker:{wid}")

    def running() -> bool:
        return os.getppid() == parent and not stop()  # the worker is gone or stopping: so is its heartbeat

    while running():
        models.maybe_report()
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + beat_every
            try:
                with sessions() as session:
                    record_heartbeat(session, wid, ",".join(queues or [settings.queue_name]), slots, gpus)
                    forget_unseen_models(session, timedelta(days=settings.model_catalogue_days))
                    forget_stale_workers(session, older_than_seconds=86_400)  # commits
            except Exception as exc:
                log.warning("worker heartbeat: %s", type(exc).__name__, exc_info=not is_outage(exc))
        if schedule_every > 0 and now >= next_schedule and not stop():
            next_schedule = now + schedule_every
            try:
                scheduler.run_once()
            except Exception:
                log.exception("scheduler pass failed")
        if reconcile_every > 0 and now >= next_reconcile:
            next_reconcile = now + reconcile_every
            try:
                reconciler.run_once()
            except Exception:
                log.exception("reconciler pass failed")
        for _ in range(10):  # a second, ended early by a stop
            if not running():
                break
            time.sleep(0.1)
    webhooks.stop()
    if sweeper is not None:
        sweeper.stop()
    try:
        with sessions() as session:
            forget_worker(session, wid)
    except Exception:
        log.warning("worker %s: could not remove its heartbeat; it ages out", wid)
