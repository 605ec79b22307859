"""Continuing a succeeded job (POST /v1/jobs/{id}/continue): what it needs, read without torch.

A training job that succeeds keeps its final resume state (worker/jobs/runner.py; failed and canceled jobs
drop theirs), recorded beside it as `latest.json` (key, step, epoch = completed epochs, size, sha256). A
continuation is a new job of the same config with more epochs, `continued_from` the source; its worker
trains on from that state (worker/training/checkpoints.py check_continuation).
"""

from __future__ import annotations

import json
from typing import Any

from shared.config.plan import saved_epochs
from shared.storage import ObjectStore, resume_state_prefix


def state_record_key(job_id: str) -> str:
    """The record of a job's newest uploaded resume state (written only once the state is complete)."""
    return f"{resume_state_prefix(job_id)}latest.json"


def final_state_record(store: ObjectStore, job_id: str, epochs: int) -> dict[str, Any] | None:
    """The record of the job's final resume state (after its last epoch, `epochs`), or None: it has none
    (deleted by retention, dropped, or a job that ended before final states were kept)."""
    key = state_record_key(job_id)
    if key not in store.list_keys(resume_state_prefix(job_id)):
        return None
    record = json.loads(b"".join(store.iter_bytes(key)))
    if not isinstance(record, dict) or record.get("epoch") != epochs or not record.get("key"):
        return None
    return record if store.object_size(record["key"]) is not None else None


def continued_plan(plan: dict[str, Any], epochs: int, save_every_n_epochs: int | None) -> dict[str, Any]:
    """The source job's stored plan for `epochs` in all (the same dataset: the same steps per epoch)."""
    return {
        **plan,
        "epochs": epochs,
        "total_steps": plan["steps_per_epoch"] * epochs,
        "saved_epochs": saved_epochs(epochs, save_every_n_epochs),
    }
