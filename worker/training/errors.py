"""Errors the training engine raises before it starts work, in the project's error shape."""

from __future__ import annotations

from shared.errors import LorabakeError


class TrainingSetupError(LorabakeError, ValueError):
    """The config cannot run on this worker (precision, device, optimizer package, empty dataset).

    Raised before any model is loaded, so a job fails fast with a message the user can act on.
    """

    status_code = 422
    code = "training_setup"
