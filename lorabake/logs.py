"""What the service's processes print: our lines at the chosen level, other libraries' only their errors.

Someone starting `lorabake serve` needs its address and key, not kombu's "No hostname was supplied", Celery's
banner or transformers' torchvision notice. `--log-level debug` (LORABAKE_LOG_LEVEL) shows all of it again.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

OURS = ("lorabake", "api", "shared", "worker")  # logger names: ours are under these
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Hugging Face libraries give their loggers a level of their own, read from these when first used.
_HF_VERBOSITY = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY")


def library_level(level: str) -> str:
    """The level of every logger not ours: their notices and warnings at debug only."""
    return "INFO" if level == "debug" else "ERROR"


def setup_logging(level: str) -> None:
    """A root handler, our loggers at `level`, the rest at library_level; before the libraries load."""
    logging.basicConfig(level=library_level(level), format=FORMAT)
    set_levels(level)
    quiet_libraries(level)


def set_levels(level: str) -> None:
    # Set on our loggers themselves, so they keep it when Celery takes over the root logger.
    for name in OURS:
        logging.getLogger(name).setLevel(level.upper())


def quiet_libraries(level: str) -> None:
    """Python warnings and the Hugging Face libraries' own levels, in this process and those it starts or
    forks (a worker's pool children)."""
    if level == "debug":
        return
    for name in _HF_VERBOSITY:
        os.environ.setdefault(name, "error")
    if not sys.warnoptions:  # -W or PYTHONWARNINGS chosen by the user win
        warnings.simplefilter("ignore")
