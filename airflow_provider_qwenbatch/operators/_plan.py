"""Turning what a user gives ``SubmitBatchOperator`` into validated shards, before anything is uploaded.

One streaming pass (:mod:`~airflow_provider_qwenbatch.client.shards`) validates the input and
splits it into shards that each fit one batch. Then, still before any upload: the billing
warnings are logged (or refused with ``strict_cost``), and ``max_input_tokens`` is checked
against an estimate of the input's prompt tokens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.shards import ShardPlan, split_jsonl_file, split_requests

REQUESTS_SOURCE = "requests (list given to the operator)"
_COPY_CHUNK = 1024 * 1024


def plan_input(
    requests: Iterable[Mapping[str, Any]] | None,
    input_path: str | None,
    input_conn_id: str | None,
    endpoint: str,
    *,
    max_lines_per_batch: int | None,
    strict_cost: bool,
    max_input_tokens: int | None,
    logger: LoggerLike,
    requests_source: str | None = None,
) -> ShardPlan | None:
    """Validate and split the operator's input, and check the token cap: everything before an upload.

    :param requests: request dicts, if the input is given so.
    :param input_path: else a JSONL path or URI.
    :param input_conn_id: Airflow Connection of the object store holding ``input_path``.
    :param endpoint: the batch endpoint.
    :param max_lines_per_batch: the user's cap on lines per shard.
    :param strict_cost: refuse billing surprises instead of warning.
    :param max_input_tokens: refuse above this many estimated prompt tokens.
    :param logger: the task log.
    :param requests_source: how errors name the request dicts (default: the ``requests`` argument).
    :returns: the plan, or ``None`` when the input is neither (an ``input_file_id``, never read).
    :raises BatchInputError: naming the file and line (or request position) of each problem.
    """
    from airflow_provider_qwenbatch.exceptions import as_airflow_errors

    with as_airflow_errors():
        if requests is not None:
            plan = plan_requests(
                requests,
                endpoint,
                max_lines_per_batch=max_lines_per_batch,
                strict_cost=strict_cost,
                logger=logger,
                source=requests_source,
            )
        elif input_path is not None:
            plan = plan_path(
                input_path,
                endpoint,
                input_conn_id,
                max_lines_per_batch=max_lines_per_batch,
                strict_cost=strict_cost,
                logger=logger,
            )
        else:
            return None
        try:
            check_token_cap(plan, max_input_tokens, logger)
        except BaseException:
            plan.cleanup()
            raise
    return plan


def plan_requests(
    requests: Iterable[Mapping[str, Any]],
    endpoint: str,
    *,
    max_lines_per_batch: int | None,
    strict_cost: bool,
    logger: LoggerLike,
    source: str | None = None,
) -> ShardPlan:
    """Validate request dicts (consumed once, never all in memory) and split them into shards.

    :param requests: request dicts, a list or a generator.
    :param endpoint: the batch endpoint.
    :param max_lines_per_batch: the user's cap on lines per shard.
    :param strict_cost: refuse billing surprises instead of warning.
    :param logger: the task log.
    :param source: how errors name the input (default: the operator's ``requests`` list).
    """
    plan = split_requests(
        requests,
        endpoint,
        max_lines_per_batch=max_lines_per_batch,
        source=source or REQUESTS_SOURCE,
        strict_cost=strict_cost,
        logger=logger,
    )
    _log_plan(plan, "request", logger)
    return plan


def plan_path(
    uri: str,
    endpoint: str,
    conn_id: str | None,
    *,
    max_lines_per_batch: int | None,
    strict_cost: bool,
    logger: LoggerLike,
) -> ShardPlan:
    """Validate a JSONL file (local, or any ObjectStoragePath URI, streamed to a temporary copy) and split it.

    :param uri: local path, ``file://`` URI or ObjectStoragePath URI.
    :param endpoint: the batch endpoint.
    :param conn_id: Airflow Connection of the object store, if it needs one.
    :param max_lines_per_batch: the user's cap on lines per shard.
    :param strict_cost: refuse billing surprises instead of warning.
    :param logger: the task log.
    """
    from airflow_provider_qwenbatch.inputs import is_remote

    if not is_remote(uri):
        local = Path(urlparse(uri).path if uri.startswith("file://") else uri).expanduser()
        plan = split_jsonl_file(
            local, endpoint, max_lines_per_batch=max_lines_per_batch, strict_cost=strict_cost, logger=logger
        )
    else:
        from airflow.sdk import ObjectStoragePath

        remote = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
        folder = Path(tempfile.mkdtemp(prefix="qwenbatch-"))
        copy = folder / (remote.name or "requests.jsonl")
        try:
            with remote.open("rb") as src, copy.open("wb") as dst:  # type: ignore[no-untyped-call]
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
            # Errors name the user's URI, not the temporary copy.
            plan = split_jsonl_file(
                copy,
                endpoint,
                max_lines_per_batch=max_lines_per_batch,
                source=uri,
                strict_cost=strict_cost,
                logger=logger,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the shards are the copy now
    _log_plan(plan, "line", logger)
    return plan


def _log_plan(plan: ShardPlan, unit: str, logger: LoggerLike) -> None:
    for warning in plan.warnings:
        logger.warning("%s", warning.render(plan.source, unit))
    logger.info(
        "Input valid: %d requests, %d bytes, model %s, in %d shard(s)",
        plan.total_lines,
        plan.total_bytes,
        plan.model or "?",
        len(plan.shards),
    )


def check_token_cap(plan: ShardPlan, max_input_tokens: int | None, logger: LoggerLike) -> None:
    """Refuse the input before upload when its estimated prompt tokens exceed ``max_input_tokens``.

    The estimate (:func:`~airflow_provider_qwenbatch.client.cost.estimate_request_tokens`:
    one token per CJK character, one per 4 other bytes, plus a few per message) is logged as
    an estimate either way.

    :param plan: the validated shards.
    :param max_input_tokens: the cap (``None``: no check, nothing read).
    :param logger: the task log.
    :raises InputValidationError: rule ``too_many_input_tokens``.
    """
    if max_input_tokens is None:
        return
    from airflow_provider_qwenbatch.client.cost import (
        TokenEstimate,
        check_max_input_tokens,
        estimate_file_tokens,
    )

    requests = tokens = out = 0
    bounded = True
    for shard in plan.shards:
        part = estimate_file_tokens(shard.path)
        requests += part.requests
        tokens += part.input_tokens
        if part.max_output_tokens is None:
            bounded = False
        else:
            out += part.max_output_tokens
    estimate = TokenEstimate(requests, tokens, out if bounded else None)
    logger.info(
        "Estimated prompt tokens (an estimate, not the server's count): about %d in %d requests; "
        "max_input_tokens=%d",
        estimate.input_tokens,
        estimate.requests,
        max_input_tokens,
    )
    check_max_input_tokens(estimate, max_input_tokens, plan.source)
