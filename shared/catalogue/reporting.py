"""A worker's report of what base models and captioner models it has: at start, within seconds of a change
in its models folder (a watch polled by the duties loop), and every `model_scan_seconds` (which also keeps the
models' last_seen_at fresh for the catalogue's retention, and catches what the watch does not see: the Hugging
Face cache)."""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from shared.catalogue.captioners import CAPTIONER_KIND
from shared.catalogue.records import record_models
from shared.catalogue.scan import ModelEntry, ModelScanner
from shared.catalogue.watch import FolderWatch
from shared.outages import is_outage
from shared.settings import Settings

log = logging.getLogger("lorabake.worker")


class ModelReporter:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], worker_id: str) -> None:
        assert settings.models_dir is not None
        self.scanner = ModelScanner(settings.models_dir)
        self.watch = FolderWatch(settings.models_dir)
        self.sessions = sessions
        self.worker_id = worker_id
        self.every = settings.model_scan_seconds
        self._logged: list[ModelEntry] | None = None
        self._next = 0.0

    def report_now(self) -> bool:
        """Scan and write; False (logged) when the database cannot be reached. Logs what changed since its
        last report: report_before_start has said what the worker started with."""
        self.watch.mark_reported()
        entries = self.scanner.scan()
        try:
            with self.sessions() as session:
                record_models(session, self.worker_id, entries)
        except Exception as exc:
            log.warning("base models report: %s", type(exc).__name__, exc_info=not is_outage(exc))
            return False
        if self._logged is not None and entries != self._logged:
            log.info("base models here now: %s", _names(entries))
        self._logged = entries
        return True

    def maybe_report(self) -> None:
        """Called every second or so: reports when the folder changed, or when the periodic report is due."""
        now = time.monotonic()
        if now >= self._next or self.watch.changed():
            self._next = now + (self.every if self.report_now() else min(self.every, 5.0))


def report_before_start(settings: Settings, worker_id: str, *, say: bool = True) -> None:
    """The first report, before the worker takes jobs, so the API knows its models by then; `say`: log
    them. The engine is disposed after: the Celery pool forks from this process and must inherit no
    connections."""
    from shared.db.session import get_engine, session_factory

    reporter = ModelReporter(
        settings, session_factory(settings.database_url, settings.engine_options), worker_id
    )
    if reporter.report_now() and say and reporter._logged is not None:
        log.info("base models here: %s", _names(reporter._logged))
    get_engine(settings.database_url, settings.engine_options).dispose()


def _names(entries: list[ModelEntry]) -> str:
    base = ", ".join(e.name for e in entries if e.kind != CAPTIONER_KIND) or "none"
    captioners = ", ".join(e.name for e in entries if e.kind == CAPTIONER_KIND)
    return base + (f"; captioners: {captioners}" if captioners else "")
