"""The Celery app both sides share. The API only sends task names; the worker registers the tasks.

Celery carries just the job id: the database row is the truth, so there is no result backend.
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

TRAIN_TASK = "lorabake.train_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("lorabake", broker=settings.broker_url, set_as_current=False)
    transport_options: dict = {
        # Longer than the hard time limit, so a slow job is never handed to a second worker while alive.
        "visibility_timeout": settings.task_time_limit + 600,
    }
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            control_folder=str(folder / "control"),  # kombu's default is ./control, in the current directory
            store_processed=False,
        )
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a worker killed mid-job (OOM) gets the job re-delivered
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_name,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_training(app: Celery, settings: Settings, job_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
