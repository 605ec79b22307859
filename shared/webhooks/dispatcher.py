"""The webhook loop a worker's duties process runs beside its other duties: fan job events out to
deliveries, then keep deliveries in flight, in a thread of its own so a slow receiver never delays a
heartbeat."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from shared.db.service_lock import try_lock
from shared.jobs.workers import worker_id
from shared.outages import is_outage
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.webhooks.delivery import Deliverer
from shared.webhooks.fanout import fan_out

log = logging.getLogger("lorabake.webhooks")

IDLE_SECONDS = 0.5  # between passes when there was nothing to do
FAN_OUT_LOCK = "webhook-fan-out"
FAN_OUT_LOCK_SECONDS = 15.0


class WebhookDispatcher:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore) -> None:
        self.sessions = sessions
        self.store = store
        self.progress_every = timedelta(seconds=settings.webhook_progress_seconds)
        self.deliverer = Deliverer(
            sessions,
            schedule=list(settings.webhook_retry_schedule),
            timeout_seconds=settings.webhook_timeout_seconds,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.allow_private_urls,
            store=store,
        )
        self.holder = f"webhooks:{worker_id()}"
        self._lock_renew_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def _holds_fan_out(self) -> bool:
        """One process fans out at a time, so the progress throttle (a check, then an insert) sees every
        delivery made before it (delivery itself runs everywhere). The lock is renewed when a third of its
        time is left."""
        now = time.monotonic()
        if now < self._lock_renew_at:
            return True
        with self.sessions() as session:
            held = try_lock(session, FAN_OUT_LOCK, self.holder, ttl_seconds=FAN_OUT_LOCK_SECONDS)
        self._lock_renew_at = now + FAN_OUT_LOCK_SECONDS * 2 / 3 if held else 0.0
        return held

    def run_once(self) -> int:
        """A fan-out pass (if this process holds the fan-out) and a delivery pass; how much either did."""
        fanned = 0
        if self._holds_fan_out():
            with self.sessions() as session:
                fanned = fan_out(session, self.store, self.progress_every)
        return fanned + self.deliverer.run_once()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception as exc:
                log.warning("webhook pass: %s", type(exc).__name__, exc_info=not is_outage(exc))
                busy = 0
            if not busy:
                self._stop.wait(IDLE_SECONDS)

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.deliverer.close()
