"""What the API process builds once at start-up and hands to every request."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from api.async_reads import AsyncReader
from api.jobs.events import EventHub
from api.jobs.views import JobViews
from api.key_cache import KeyCache
from api.queue.service import QueueStanding
from shared.db.session import session_factory
from shared.jobs.scheduler import Scheduler
from shared.jobs.workers import worker_id
from shared.queue import JobDispatcher, make_celery
from shared.settings import Settings
from shared.storage import ObjectStore, build_store

log = logging.getLogger("lorabake.api")


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery
    dispatcher: JobDispatcher
    scheduler: Scheduler  # sends queued jobs as workers have room (run after each submission too)
    keys: KeyCache
    events: EventHub = field(repr=False)
    reader: AsyncReader | None = field(repr=False)
    job_views: JobViews = field(repr=False)

    def remove_objects(self, prefix: str) -> None:
        """Best effort, for cleaning up after a failed or finished request: storage may be what failed."""
        try:
            self.store.delete_prefix(prefix)
        except Exception:
            log.exception("could not remove the objects under %s; they are left behind", prefix)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        sessions = session_factory(settings.database_url, settings.engine_options)
        celery = make_celery(settings)
        reader = AsyncReader.for_settings(settings)
        dispatcher = JobDispatcher(celery, settings)
        return cls(
            settings,
            sessions,
            build_store(settings),
            celery,
            dispatcher,
            Scheduler(settings, sessions, dispatcher, holder=f"api:{worker_id()}"),
            KeyCache(settings.auth_cache_seconds),
            EventHub(sessions),
            reader,
            JobViews(sessions, reader, QueueStanding(sessions, settings)),
        )
