"""The service's state as metrics, read from the database and the broker at every scrape.

Why at scrape time, from the database: several API replicas may run, and the jobs they serve are run by
workers elsewhere. Counting in-process would give each replica its own partial story; the rows give every
replica the same, whole one. That includes the duration histograms: they are not counters kept since the
process started but the jobs of a sliding window (reads.WINDOW, 24 h) bucketed at each scrape, so use them
as they are (`histogram_quantile(0.9, lorabake_job_queued_seconds_bucket)`), never through `rate()`.

A source that is down (or slower than its timeout) leaves its metrics out of that scrape and adds one to
`lorabake_scrape_errors_total{source}`: the scrape still answers, with everything else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.metrics.reads import RUNNING_BUCKETS, DatabaseReadings, Durations, read_database
from shared.broker_inspect import queue_depth
from shared.db.models import JobStatus, WebhookAttempt, WebhookDelivery
from shared.outages import is_outage
from shared.settings import Settings
from shared.usage.reads import all_time_totals
from shared.usage.storage import storage_held

log = logging.getLogger("lorabake.api")
SOURCES = ("database", "broker")


def webhook_delivery_families(session: Session) -> list[Metric]:
    """Webhook deliveries by status (pending: being sent or retried; delivered; failed: retries ran out) and
    attempts by outcome (answered 2xx, answered otherwise, no answer), all time, from the database."""
    deliveries = GaugeMetricFamily(
        "lorabake_webhook_deliveries", "Webhook deliveries in each status, now.", labels=["status"]
    )
    counts = dict(
        session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all()
    )
    for status in ("pending", "delivered", "failed"):
        deliveries.add_metric([status], counts.get(status, 0))
    attempts = CounterMetricFamily(
        "lorabake_webhook_attempts",
        "Webhook delivery attempts, by how the receiver answered.",
        labels=["outcome"],
    )
    outcome = case(
        (WebhookAttempt.status_code.is_(None), "no_answer"),
        (WebhookAttempt.status_code.between(200, 299), "ok"),
        else_="error_status",
    )
    tried = dict(session.execute(select(outcome, func.count()).group_by(outcome)).all())
    for name in ("ok", "error_status", "no_answer"):
        attempts.add_metric([name], tried.get(name, 0))
    return [deliveries, attempts]


def usage_families(session: Session) -> list[Metric]:
    """The usage ledger's all-time totals per owner, job kind and GPU model (counters: the ledger is only
    added to), and the storage each owner holds now."""
    labels = ["owner", "kind", "gpu"]
    gpu_seconds = CounterMetricFamily(
        "lorabake_usage_gpu_seconds",
        "GPU seconds used by each owner's jobs, by job kind and GPU model.",
        labels=labels,
    )
    steps = CounterMetricFamily(
        "lorabake_usage_steps_trained",
        "Training steps of each owner's jobs (each step of a job once).",
        labels=labels,
    )
    images = CounterMetricFamily(
        "lorabake_usage_images_captioned", "Images captioned by each owner's jobs.", labels=labels
    )
    for owner, kind, gpu, counts in all_time_totals(session):
        gpu_seconds.add_metric([owner, kind, gpu], counts.gpu_seconds)
        steps.add_metric([owner, kind, gpu], counts.steps_trained)
        images.add_metric([owner, kind, gpu], counts.images_captioned)
    storage = GaugeMetricFamily(
        "lorabake_usage_storage_bytes",
        "Bytes each owner holds in storage now, by what they are.",
        labels=["owner", "part"],
    )
    for owner, held in sorted(storage_held(session).items()):
        for part, size in asdict(held).items():
            storage.add_metric([owner, part.removesuffix("_bytes")], size)
    return [gpu_seconds, steps, images, storage]


def _histogram(family: HistogramMetricFamily, labels: list[str], durations: Durations) -> None:
    buckets = [(floatToGoString(bound), count) for bound, count in durations.buckets]
    family.add_metric(labels, buckets, durations.total)


def database_families(readings: DatabaseReadings) -> list[Metric]:
    jobs = GaugeMetricFamily("lorabake_jobs", "Jobs in each status, now.", labels=["status"])
    for status, count in sorted(readings.jobs_by_status.items()):
        jobs.add_metric([status], count)
    workers = GaugeMetricFamily(
        "lorabake_workers_alive", "Workers whose heartbeat is recent (within 3 lease renewals)."
    )
    workers.add_metric([], readings.workers_alive)
    queued = HistogramMetricFamily(
        "lorabake_job_queued_seconds",
        "From submission to a worker's first start, for the jobs started in the last 24 h.",
        labels=[],
    )
    _histogram(queued, [], readings.queued)
    running = HistogramMetricFamily(
        "lorabake_job_running_seconds",
        "From a worker's first start to the end, for the jobs that ended in the last 24 h, by outcome.",
        labels=["status"],
    )
    for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled):
        found = readings.running_by_status.get(status.value) or Durations.empty(RUNNING_BUCKETS)
        _histogram(running, [status.value], found)
    rates = GaugeMetricFamily(
        "lorabake_job_steps_per_second",
        "Training speed of each job in training, as its worker last reported it.",
        labels=["job_id"],
    )
    for job_id, rate in sorted(readings.steps_per_second.items()):
        rates.add_metric([job_id], rate)
    waiting = GaugeMetricFamily(
        "lorabake_queue_waiting",
        "Queued jobs of each queue, waiting for a worker's free slot or sent and not yet started (what an "
        "autoscaler should watch: the broker holds only the jobs already given to a worker).",
        labels=["queue"],
    )
    for queue, count in sorted(readings.queued_by_queue.items()):
        waiting.add_metric([queue], count)
    return [jobs, workers, queued, running, rates, waiting]


class ServiceCollector(Collector):
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._errors = dict.fromkeys(SOURCES, 0)
        self._lock = threading.Lock()  # scrapes may run at once, each in a thread

    def collect(self) -> Iterable[Metric]:
        # Each source is read completely before anything is yielded, so a failure leaves out all of it.
        yield from self._database()
        yield from self._broker()
        errors = CounterMetricFamily(
            "lorabake_scrape_errors",
            "Scrapes that could not read a source (then left out).",
            labels=["source"],
        )
        with self._lock:
            for source, count in self._errors.items():
                errors.add_metric([source], count)
        yield errors

    def _database(self) -> list[Metric]:
        try:
            with self.sessions() as session:
                readings = read_database(
                    session,
                    heartbeat_within=3 * self.settings.lease_renew_seconds,
                    default_queue=self.settings.queue_name,
                )
                webhooks = webhook_delivery_families(session)
                usage = usage_families(session)
        except Exception as exc:
            self._failed("database", exc)
            return []
        return [*database_families(readings), *webhooks, *usage]

    def _broker(self) -> list[Metric]:
        try:
            depth = queue_depth(self.settings)
        except Exception as exc:
            self._failed("broker", exc)
            return []
        if depth is None:  # a broker whose storage we cannot read
            return []
        family = GaugeMetricFamily(
            "lorabake_queue_depth", "Jobs waiting in the broker's queue for a worker.", labels=["queue"]
        )
        family.add_metric([self.settings.queue_name], depth)
        return [family]

    def _failed(self, source: str, exc: Exception) -> None:
        with self._lock:
            self._errors[source] += 1
        log.warning(
            "metrics: could not read the %s: %s: %s",
            source,
            type(exc).__name__,
            str(exc)[:200],
            exc_info=not is_outage(exc),
        )
