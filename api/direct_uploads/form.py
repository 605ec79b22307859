"""The embedded mode's answer to an S3 presigned POST: a multipart form (the fields POST /v1/uploads gave,
then the zip as `file`) read as it arrives, with its file streamed out piece by piece and refused past the
size limit, as S3 refuses a file outside its policy's content-length-range. Nothing is buffered whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from shared.errors import LorabakeError, PayloadTooLargeError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict for type checkers only

FILE_FIELD = "file"
MAX_FIELDS = 20  # S3's form has under ten; more is not a client of ours
FIELD_MAX_BYTES = 8 * 1024
FORM_OVERHEAD = 256 * 1024  # what a body may hold beside the file: fields, part headers, boundaries


def _form_error(message: str, field: str, code: str = "invalid_form") -> LorabakeError:
    return LorabakeError(message, code=code, details={"field": field}, status_code=422)


def file_too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the file is over the limit of {max_bytes} bytes (max_bytes of POST /v1/uploads)",
        details={"field": FILE_FIELD, "limit_bytes": max_bytes},
    )


def form_boundary(request: Request) -> bytes:
    """The boundary of a multipart/form-data body; any other body is a 422 naming it."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise _form_error(
            "send a multipart/form-data body: the fields POST /v1/uploads gave, then the zip as `file`",
            "body",
        )
    return boundary


class UploadFormParser:
    """python-multipart's callbacks: text fields kept (small, few), the `file` part's bytes handed on in
    `pending`. The file must come after the fields and its `key` must be the upload's (checked before a
    byte of it is kept); parts after it are ignored, as S3 ignores them."""

    def __init__(self, expected_key: str, max_bytes: int) -> None:
        self.expected_key = expected_key
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.file_size = 0
        self.file_done = False
        self.pending = bytearray()  # file bytes parsed, not yet taken by the writer
        self._in_file = False
        self._name = ""
        self._data = bytearray()
        self._header = (b"", b"")
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._name, self._data, self._header, self._disposition = "", bytearray(), (b"", b""), b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def _header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = (b"", b"")

    def _headers_finished(self) -> None:
        if self.file_done:
            return
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if not self._name:
            raise _form_error("a form part has no name (Content-Disposition: form-data; name=...)", "body")
        self._in_file = self._name == FILE_FIELD
        if self._in_file:
            self._check_key()
        elif len(self.fields) >= MAX_FIELDS:
            raise _form_error(f"the form has more than {MAX_FIELDS} fields", self._name)

    def _check_key(self) -> None:
        key = self.fields.get("key")
        if key is None:
            raise _form_error("the form needs the field `key` before `file`", "key", "missing_field")
        if key != self.expected_key:
            raise _form_error("`key` must be the one POST /v1/uploads gave for this upload", "key")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file_done:
            return
        if self._in_file:
            self.file_size += end - start
            if self.file_size > self.max_bytes:
                raise file_too_large(self.max_bytes)
            self.pending += data[start:end]
            return
        self._data += data[start:end]
        if len(self._data) > FIELD_MAX_BYTES:
            raise _form_error(f"form field {self._name} is over {FIELD_MAX_BYTES} bytes", self._name)

    def _part_end(self) -> None:
        if self.file_done:
            return
        if self._in_file:
            self.file_done = True
        else:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def check_complete(self) -> None:
        if not self.file_done:
            raise _form_error(
                "the form has no complete `file` part (the zip, last)", FILE_FIELD, "missing_field"
            )
        if self.file_size == 0:
            raise _form_error("the file is empty", FILE_FIELD)


async def form_file_pieces(request: Request, form: UploadFormParser) -> AsyncIterator[bytes]:
    """The `file` part's bytes as the body arrives; raises (413, 422) as soon as the body is refused, so
    a caller writing the pieces to disk deletes what it wrote."""
    declared = request.headers.get("content-length", "")
    max_body = form.max_bytes + FORM_OVERHEAD
    if declared.isdigit() and int(declared) > max_body:
        raise file_too_large(form.max_bytes)  # said up front: refused before a byte is read
    parser = MultipartParser(form_boundary(request), form.callbacks())
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body:  # a body that lied about its length, or pads around the file
            raise file_too_large(form.max_bytes)
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise _form_error(f"the multipart body is malformed: {exc}", "body") from exc
        if form.pending:
            yield bytes(form.pending)
            form.pending.clear()
    parser.finalize()
    form.check_complete()
