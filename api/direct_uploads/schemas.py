"""Bodies of /v1/uploads."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(
        None, max_length=300, description="what the dataset is named after (default dataset.zip)"
    )


class UploadForm(BaseModel):
    url: str = Field(description="where to POST the form: the bucket (S3), or this API (embedded mode)")
    fields: dict[str, str] = Field(
        description="multipart form fields to send as given, before the file; then the zip as the field "
        "`file`, last (S3 ignores fields after it)"
    )


class UploadOut(BaseModel):
    upload_id: str = Field(description="give it to POST /v1/datasets or POST /v1/jobs once the file is sent")
    method: str = Field(
        "PUT",
        description="how to send the zip to `url`: the whole file as the body. A PUT cannot cap its size "
        "(an oversize zip is only refused when it is used); prefer `post` where the size must be capped",
    )
    url: str = Field(
        description="where to PUT the zip: storage itself (S3), or this API (embedded mode); kept for "
        "clients that PUT, `post` caps the size"
    )
    headers: dict[str, str] = Field(description="headers the PUT must carry, as given")
    post: UploadForm = Field(
        description="the same upload as a multipart form POST (`fields`, then the zip as `file`), which "
        "browsers send as a form: prefer it where the size must be capped, since storage refuses a file "
        "over `max_bytes` before keeping it (S3 by the signed policy's content-length-range, the embedded "
        "mode with a 413)"
    )
    max_bytes: int = Field(description="the largest zip that will be accepted")
    url_expires_at: datetime = Field(description="`url` and `post` work until then")
    expires_at: datetime = Field(description="use the upload by then; later it is deleted")


class UploadReceived(BaseModel):
    upload_id: str
    size_bytes: int
