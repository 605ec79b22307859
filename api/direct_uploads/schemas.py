"""Bodies of /v1/uploads."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(
        None, max_length=300, description="what the dataset is named after (default dataset.zip)"
    )


class UploadOut(BaseModel):
    upload_id: str = Field(description="give it to POST /v1/datasets or POST /v1/jobs once the file is PUT")
    method: str = Field("PUT", description="how to send the zip to `url`: the whole file as the body")
    url: str = Field(description="where to send the zip: storage itself (S3), or this API (embedded mode)")
    headers: dict[str, str] = Field(description="headers the request must carry, as given")
    max_bytes: int = Field(description="the largest zip that will be accepted")
    url_expires_at: datetime = Field(description="the URL works until then")
    expires_at: datetime = Field(description="use the upload by then; later it is deleted")


class UploadReceived(BaseModel):
    upload_id: str
    size_bytes: int
