"""The Qwen Cloud (DashScope) Batch API, usable without Airflow.

Nothing in this package imports Airflow: a plain script can use :class:`BatchClient` or
:class:`AsyncBatchClient` directly. Names are loaded on first use (PEP 562), so a DAG file
that imports one operator does not pay for the whole client at parse time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AsyncBatchClient": "aio",
    "CancelAction": "cancel",
    "CancelOutcome": "cancel",
    "acancel_quietly": "cancel",
    "cancel_quietly": "cancel",
    "AuthenticationError": "errors",
    "BadRequestError": "errors",
    "InputValidationError": "errors",
    "InvalidResponseError": "errors",
    "NotFoundError": "errors",
    "QwenBatchAPIError": "errors",
    "QwenBatchConnectionError": "errors",
    "QwenBatchError": "errors",
    "RateLimitError": "errors",
    "ServerError": "errors",
    "ValidationProblem": "errors",
    "BatchTag": "identity",
    "find_tags": "identity",
    "run_tag": "identity",
    "PriceTable": "cost",
    "InputLimits": "jsonl",
    "InputWarning": "billing",
    "InputSummary": "jsonl",
    "validate_jsonl_file": "jsonl",
    "write_jsonl": "jsonl",
    "ResultFiles": "merge",
    "merge_results": "merge",
    "write_resubmission": "merge",
    "Batch": "models",
    "BatchError": "models",
    "BatchErrors": "models",
    "BatchList": "models",
    "BatchRequestLine": "models",
    "BatchResultLine": "models",
    "FileDeleted": "models",
    "FileList": "models",
    "FileObject": "models",
    "RequestCounts": "models",
    "Usage": "models",
    "DEFAULT_BASE_URL": "regions",
    "Region": "regions",
    "RetryPolicy": "retry",
    "BatchStatus": "status",
    "BatchClient": "sync",
    "Shard": "shards",
    "ShardPlan": "shards",
    "split_jsonl_file": "shards",
    "split_requests": "shards",
    "parse_completion_window": "window",
}

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
    "InputWarning",
    "InvalidResponseError",
    "NotFoundError",
    "PriceTable",
    "QwenBatchAPIError",
    "QwenBatchConnectionError",
    "QwenBatchError",
    "RateLimitError",
    "Region",
    "RequestCounts",
    "ResultFiles",
    "RetryPolicy",
    "ServerError",
    "Shard",
    "ShardPlan",
    "Usage",
    "ValidationProblem",
    "acancel_quietly",
    "cancel_quietly",
    "find_tags",
    "merge_results",
    "parse_completion_window",
    "run_tag",
    "split_jsonl_file",
    "split_requests",
    "validate_jsonl_file",
    "write_jsonl",
    "write_resubmission",
]

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
    from airflow_provider_qwenbatch.client.billing import InputWarning
    from airflow_provider_qwenbatch.client.cancel import (
        CancelAction,
        CancelOutcome,
        acancel_quietly,
        cancel_quietly,
    )
    from airflow_provider_qwenbatch.client.cost import PriceTable
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
    from airflow_provider_qwenbatch.client.merge import ResultFiles, merge_results, write_resubmission
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
    from airflow_provider_qwenbatch.client.shards import Shard, ShardPlan, split_jsonl_file, split_requests
    from airflow_provider_qwenbatch.client.status import BatchStatus
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.client.window import parse_completion_window


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
