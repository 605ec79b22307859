"""What the API process builds once at start-up and hands to every request."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_factory
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import ObjectStore, build_store


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        return cls(
            settings, session_factory(settings.database_url), build_store(settings), make_celery(settings)
        )
