"""pydantic v2 models of the batch API's objects.

They accept every shape the live service sends (see the recordings in the tests): unset
timestamps as ``null`` or ``0``, an empty list page with ``data: null``, and fields this
code does not know, which are kept (``extra="allow"``) so nothing the server said is lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

# ENDPOINTS and the test model are re-exported: the endpoint rule lives in a light module of its own.
from airflow_provider_qwenbatch.client.endpoints import ENDPOINTS as ENDPOINTS
from airflow_provider_qwenbatch.client.endpoints import TEST_ENDPOINT as TEST_ENDPOINT
from airflow_provider_qwenbatch.client.endpoints import TEST_MODEL as TEST_MODEL
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.window import parse_completion_window

Endpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/chat/ds-test"]


class _ApiModel(BaseModel):
    # Schemas are built on first use, not at import: a DAG file importing the operators stays cheap to parse.
    model_config = ConfigDict(extra="allow", populate_by_name=True, defer_build=True)
    # The x-request-id of the answer this object came from, to quote in logs and errors.
    _request_id: str | None = PrivateAttr(default=None)

    @property
    def x_request_id(self) -> str | None:
        """The server's ``x-request-id`` of the answer this object was parsed from."""
        return self._request_id


def _zero_is_unset(value: Any) -> Any:
    # Some doc examples show 0 for an unset timestamp; the live service sends null.
    # Both mean "not yet", so both become None.
    if value == 0:
        return None
    return value


class RequestCounts(_ApiModel):
    """Request counters of a batch.

    :param total: lines in the input file (0 while validating).
    :param completed: lines answered successfully so far.
    :param failed: lines failed so far (cancelled lines count here).
    """

    total: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        """Lines finished one way or the other."""
        return self.completed + self.failed

    def progress(self) -> str:
        """Render as ``done/total (pct%)`` for the task log."""
        pct = (100.0 * self.done / self.total) if self.total else 0.0
        return f"{self.done}/{self.total} ({pct:.1f}%)"


class BatchError(_ApiModel):
    """One validation error of a batch (``errors.data[]``).

    :param code: e.g. ``url_not_found``, ``duplicate_custom_id``.
    :param message: the server's explanation.
    :param param: the field concerned.
    :param line: 1-based line of the input file, when known.
    """

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None

    def render(self) -> str:
        """Render as ``line N: [code] message (param)``."""
        where = f"line {self.line}: " if self.line is not None else ""
        param = f" (param {self.param})" if self.param else ""
        return f"{where}[{self.code}] {self.message}{param}"


class BatchErrors(_ApiModel):
    """The ``errors`` object of a batch."""

    object: str = "list"
    data: list[BatchError] | None = None


class Batch(_ApiModel):
    """A batch job as the API returns it."""

    id: str
    object: str = "batch"
    endpoint: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts | None = None
    metadata: dict[str, Any] | None = None

    @field_validator(
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        mode="before",
    )
    @classmethod
    def _timestamps(cls, v: Any) -> Any:
        return _zero_is_unset(v)

    @property
    def counts(self) -> RequestCounts:
        """Request counts, zeros when the server sent none."""
        return self.request_counts or RequestCounts()

    @property
    def deadline(self) -> datetime | None:
        """When the batch expires: ``created_at + completion_window``.

        The server leaves ``expires_at`` null, so it is computed here.
        """
        if self.expires_at:
            return datetime.fromtimestamp(self.expires_at, tz=timezone.utc)
        if self.created_at is None or not self.completion_window:
            return None
        try:
            window: timedelta = parse_completion_window(self.completion_window)
        except ValueError:
            return None
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc) + window

    @property
    def error_list(self) -> list[BatchError]:
        """The batch's validation errors (empty when none)."""
        if self.errors is None or not self.errors.data:
            return []
        return list(self.errors.data)

    def describe_errors(self) -> str:
        """A one-line summary of the errors, for exception messages."""
        errs = self.error_list
        return "; ".join(e.render() for e in errs) if errs else "no error details from the server"


class BatchList(_ApiModel):
    """A page of ``GET /batches``; ``data`` is ``null`` on an empty page."""

    object: str = "list"
    data: list[Batch] | None = None
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @property
    def batches(self) -> list[Batch]:
        """The page's batches (empty when ``data`` is null)."""
        return list(self.data or [])


class FileObject(_ApiModel):
    """A file of the Files API."""

    id: str
    object: str = "file"
    bytes: int | None = None
    filename: str | None = None
    purpose: str | None = None
    status: str | None = None
    created_at: int | None = None
    status_details: str | None = None


class FileList(_ApiModel):
    """A page of ``GET /files``."""

    object: str = "list"
    data: list[FileObject] | None = None
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @property
    def files(self) -> list[FileObject]:
        """The page's files (empty when ``data`` is null)."""
        return list(self.data or [])


class FileDeleted(_ApiModel):
    """Answer of ``DELETE /files/{id}``."""

    id: str
    object: str = "file"
    deleted: bool


class BatchRequestLine(_ApiModel):
    """One line of a batch input file.

    :param custom_id: the caller's id, unique within the file; results are matched by it.
    :param method: always ``POST``.
    :param url: the endpoint, equal to the batch's ``endpoint``.
    :param body: the request body, with ``model``.
    """

    custom_id: str
    method: Literal["POST"] = "POST"
    url: str
    body: dict[str, Any]


class ResultResponse(_ApiModel):
    """The ``response`` part of a result line."""

    status_code: int
    request_id: str | None = None
    body: Any = None


class ResultError(_ApiModel):
    """The ``error`` part of a result line (schema UNCONFIRMED: every field optional)."""

    code: str | None = None
    message: str | None = None


class Usage(_ApiModel):
    """Token usage of one answered request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class BatchResultLine(_ApiModel):
    """One line of a result (output or error) file.

    A line of the OUTPUT file can carry a non-200 ``status_code`` while the batch's
    ``request_counts.failed`` says 0, so :attr:`ok` checks the line itself.
    """

    id: str | None = None
    custom_id: str
    response: ResultResponse | None = None
    error: ResultError | None = None

    @property
    def ok(self) -> bool:
        """Whether this request succeeded (HTTP 200 and no error)."""
        return self.error is None and self.response is not None and self.response.status_code == 200

    @property
    def usage(self) -> Usage | None:
        """Token usage of the answer, if the body reports it."""
        if self.response is None or not isinstance(self.response.body, dict):
            return None
        raw = self.response.body.get("usage")
        if not isinstance(raw, dict):
            return None
        try:
            return Usage.model_validate(raw)
        except ValueError:
            return None

    def describe_error(self) -> str:
        """The line's error, for logs."""
        if self.error is not None:
            return f"[{self.error.code}] {self.error.message}"
        if self.response is not None and self.response.status_code != 200:
            body = self.response.body
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                return f"HTTP {self.response.status_code}: {body['error'].get('message')}"
            return f"HTTP {self.response.status_code}"
        return ""


class BatchCreateRequest(_ApiModel):
    """Body of ``POST /batches``, validated before anything is sent."""

    input_file_id: str = Field(min_length=1)
    endpoint: Endpoint
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None

    @field_validator("completion_window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_completion_window(v)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        for key, limit in METADATA_LIMITS.items():
            value = v.get(key)
            if value is not None and len(value) > limit:
                raise ValueError(
                    f"metadata.{key} is {len(value)} characters long; the API allows at most {limit}"
                )
        return v


METADATA_LIMITS: dict[str, int] = {"ds_name": 100, "ds_description": 200}
