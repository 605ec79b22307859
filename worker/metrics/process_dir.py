"""The folder a worker's processes write their metrics to (see worker/metrics/__init__.py).

No prometheus_client import here: the variable must be set before that library is first imported in this
process, or the children Celery forks from it would inherit its single-process mode.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger("lorabake.worker")
VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare(settings: Settings) -> Path | None:
    """A fresh folder for this worker (never reused: stale files would add old counts), named in the
    environment its children and its duties process inherit. None when the worker's port is off."""
    if not settings.worker_metrics_port:
        return None
    if "prometheus_client" in sys.modules:
        log.warning(
            "prometheus_client was imported before %s was set: worker metrics may stay empty", VARIABLE
        )
    folder = Path(tempfile.mkdtemp(prefix="lorabake-metrics-"))
    os.environ[VARIABLE] = str(folder)
    return folder


def remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
