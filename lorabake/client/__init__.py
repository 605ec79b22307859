"""A typed Python client of the lorabake HTTP API (docs/client.md).

from lorabake.client import LorabakeClient

with LorabakeClient.from_env() as lb:  # LORABAKE_URL, LORABAKE_API_KEY
    job = lb.submit_job({"base_model": "tiny-sd15", "epochs": 2}, dataset="lisa/")
    # or: upload_id=lb.upload_direct("lisa/"), webhook="https://hooks.example.com/lorabake"
    for event in lb.events(job.id):
        print(event.type, event.data)
    for artifact in lb.list_artifacts(job.id):
        lb.download_artifact(artifact, "out/")
"""

from lorabake.client.client import DEFAULT_URL, LorabakeClient
from lorabake.client.downloads import DownloadResult, sha256_file, verify_file
from lorabake.client.errors import (
    ChecksumMismatchError,
    LorabakeAPIError,
    LorabakeClientError,
    LorabakeConnectionError,
)
from lorabake.client.http import api_error
from lorabake.client.models import (
    TERMINAL_STATUSES,
    ApiKeyInfo,
    Artifact,
    BaseModelInfo,
    Caption,
    CaptionEditResult,
    CaptionerInfo,
    Captions,
    Checkpoint,
    CreatedKey,
    CreatedWebhook,
    Dataset,
    DatasetImage,
    DatasetPage,
    DatasetSummary,
    DeliveryPage,
    ErrorInfo,
    Event,
    Job,
    JobPage,
    KeyLimits,
    KeyPage,
    KohyaImport,
    ModelCatalogue,
    NamedQueue,
    Plan,
    Preset,
    Progress,
    Queue,
    QueueCounts,
    Readiness,
    TagCount,
    Upload,
    Usage,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
)

__all__ = [
    "ApiKeyInfo",
    "Artifact",
    "BaseModelInfo",
    "Caption",
    "CaptionEditResult",
    "CaptionerInfo",
    "Captions",
    "Checkpoint",
    "ChecksumMismatchError",
    "CreatedKey",
    "CreatedWebhook",
    "DEFAULT_URL",
    "Dataset",
    "DatasetImage",
    "DatasetPage",
    "DatasetSummary",
    "DeliveryPage",
    "DownloadResult",
    "ErrorInfo",
    "Event",
    "Job",
    "JobPage",
    "KeyLimits",
    "KeyPage",
    "KohyaImport",
    "LorabakeAPIError",
    "LorabakeClient",
    "LorabakeClientError",
    "LorabakeConnectionError",
    "ModelCatalogue",
    "NamedQueue",
    "Plan",
    "Preset",
    "Progress",
    "Queue",
    "QueueCounts",
    "Readiness",
    "TERMINAL_STATUSES",
    "TagCount",
    "Upload",
    "Usage",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSecret",
    "api_error",
    "sha256_file",
    "verify_file",
]
