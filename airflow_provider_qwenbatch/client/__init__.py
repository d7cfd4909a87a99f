"""The Qwen Cloud (DashScope) Batch API, usable without Airflow.

Nothing in this package imports Airflow: a plain script can use :class:`BatchClient` or
:class:`AsyncBatchClient` directly.
"""

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.cancel import (
    CancelAction,
    CancelOutcome,
    acancel_quietly,
    cancel_quietly,
)
from airflow_provider_qwenbatch.client.errors import (
    AuthenticationError,
    BadRequestError,
    InputValidationError,
    InvalidResponseError,
    NotFoundError,
    QwenBatchAPIError,
    QwenBatchConnectionError,
    QwenBatchError,
    RateLimitError,
    ServerError,
    ValidationProblem,
)
from airflow_provider_qwenbatch.client.identity import BatchTag, find_tags, run_tag
from airflow_provider_qwenbatch.client.jsonl import (
    InputLimits,
    InputSummary,
    validate_jsonl_file,
    write_jsonl,
)
from airflow_provider_qwenbatch.client.models import (
    Batch,
    BatchError,
    BatchErrors,
    BatchList,
    BatchRequestLine,
    BatchResultLine,
    FileDeleted,
    FileList,
    FileObject,
    RequestCounts,
    Usage,
)
from airflow_provider_qwenbatch.client.regions import DEFAULT_BASE_URL, Region
from airflow_provider_qwenbatch.client.retry import RetryPolicy
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.client.window import parse_completion_window

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncBatchClient",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchClient",
    "BatchError",
    "BatchErrors",
    "BatchList",
    "BatchRequestLine",
    "BatchResultLine",
    "BatchStatus",
    "BatchTag",
    "CancelAction",
    "CancelOutcome",
    "FileDeleted",
    "FileList",
    "FileObject",
    "InputLimits",
    "InputSummary",
    "InputValidationError",
    "InvalidResponseError",
    "NotFoundError",
    "QwenBatchAPIError",
    "QwenBatchConnectionError",
    "QwenBatchError",
    "RateLimitError",
    "Region",
    "RequestCounts",
    "RetryPolicy",
    "ServerError",
    "Usage",
    "ValidationProblem",
    "acancel_quietly",
    "cancel_quietly",
    "find_tags",
    "parse_completion_window",
    "run_tag",
    "validate_jsonl_file",
    "write_jsonl",
]
