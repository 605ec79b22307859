"""Which webhook event a job event is, and the payload it carries: the same JSON as the API's resources.

A job event (shared.jobs.state.add_event: status, stage, progress, artifact) becomes exactly one webhook
event:

| job event | webhook `type` |
| --- | --- |
| status queued / preparing / training / ... | `job.status` |
| status succeeded, failed, canceled | `job.succeeded`, `job.failed`, `job.canceled` |
| stage (loading the model, caching latents, ...) | `job.stage` |
| progress (throttled to one per `webhook_progress_seconds` per job and endpoint) | `job.progress` |
| artifact (a saved epoch's LoRA file, a sample image, captions) | `job.artifact` |
| expired (retention deleted its files, shared/jobs/sweeper.py) | `job.expired` |

The payload is `{"type", "timestamp", "sequence", "data": {"job": <GET /v1/jobs/{id}>, "event": <the
event's data as the /events stream sends it>, "artifact": <for job.artifact: the file, with a presigned
`storage_url`>}}`. `sequence` is the job event's id (the `id:` of the /events stream): it grows with each of
the job's events, so receivers order by it, since deliveries do not wait for each other (delivery.py).
"""

from __future__ import annotations

from typing import Any

from shared.db.models import Job, JobEvent
from shared.resources import ArtifactOut, JobOut

EVENT_TYPES: tuple[str, ...] = (
    "job.status",
    "job.stage",
    "job.progress",
    "job.artifact",
    "job.succeeded",
    "job.failed",
    "job.canceled",
    "job.expired",
)
_TERMINAL = {"succeeded", "failed", "canceled"}


def webhook_type(event: JobEvent) -> str | None:
    """The webhook event type of a job event; None for a kind webhooks do not carry."""
    if event.type == "status":
        status = event.data.get("status")
        return f"job.{status}" if status in _TERMINAL else "job.status"
    if event.type in ("stage", "progress", "artifact", "expired"):
        return f"job.{event.type}"
    return None


def payload(
    event_type: str, event: JobEvent, job: Job, storage_url: str | None, timestamp: str
) -> dict[str, Any]:
    data: dict[str, Any] = {"job": JobOut.of(job).model_dump(mode="json"), "event": event.data}
    if event.type == "artifact":
        artifact = next((a for a in job.artifacts if a.id == event.data.get("id")), None)
        if artifact is not None:
            data["artifact"] = {
                **ArtifactOut.of(artifact).model_dump(mode="json"),
                "storage_url": storage_url,
            }
    return {"type": event_type, "timestamp": timestamp, "sequence": event.id, "data": data}
