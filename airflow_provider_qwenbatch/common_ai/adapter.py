"""``QwenBatchAdapter``: common.ai's ``@task.llm_batch`` on DashScope, through this provider's client.

common.ai 1.0.0 picks a batch adapter by the ``model_id`` prefix; pydantic-ai names DashScope
``alibaba`` (``alibaba:qwen-plus``), so this adapter serves that prefix. It differs from
common.ai's OpenAI adapter where DashScope differs from OpenAI, and where a paid batch is at
stake:

- Input is checked by the provider's own validator (:mod:`..client.jsonl`: DashScope's limits,
  one model per file, 1-based line numbers), and the region's batch model list warns before
  upload.
- ``POST /batches`` is never retried blindly (the OpenAI SDK retries it by default, and one
  lost reply left three paid batches against the emulator). When a create's reply is lost the
  adapter looks the batch up by its tag and input file, so exactly one batch exists.
- Every batch carries the provider's :class:`~..client.identity.BatchTag` in
  ``metadata.ds_name``, so the provider's run clean-up (listener, callbacks) finds and cancels
  it like any other, and ``ds_description`` carries common.ai's key and input fingerprint for
  :meth:`QwenBatchAdapter.find_orphaned_batch` (custom metadata keys are not known to be kept).
- Results are streamed line by line, never held whole.

The common.ai batch API is marked experimental; the ``[common-ai]`` extra pins its minor version.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.ai.batch.base import (
    BatchAdapter,
    BatchState,
    BatchStatus,
    ExtractedOutput,
    RawResultItem,
    SubmitResult,
)
from airflow.providers.common.ai.exceptions import (
    LLMBatchInputError,
    LLMBatchLimitExceededError,
    LLMBatchModelMismatchError,
)

from airflow_provider_qwenbatch.client.errors import (
    AuthenticationError,
    BadRequestError,
    InputValidationError,
    NotFoundError,
    QwenBatchError,
    RateLimitError,
)
from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.client.jsonl import (
    MAX_FILE_BYTES,
    MAX_LINES,
    InputSummary,
    warn_if_model_not_in_region,
    write_jsonl,
)
from airflow_provider_qwenbatch.client.models import Batch, BatchResultLine
from airflow_provider_qwenbatch.client.regions import Region, region_of_base_url
from airflow_provider_qwenbatch.common_ai.results import parse_result_line

if TYPE_CHECKING:
    from airflow.providers.common.ai.batch.base import BatchRequest
    from airflow.providers.common.ai.batch.output_schema import OutputSpec

    from airflow_provider_qwenbatch.client.sync import BatchClient

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
API_KEY_ENV = "DASHSCOPE_API_KEY"
# pydantic-ai's own default for ``alibaba:`` (so @task.llm and @task.llm_batch on one Connection
# without a host reach the same region, where the key is valid).
DEFAULT_BASE_URL = Region.SINGAPORE.base_url
# A lost create reply: how often, and how far apart, to look for the batch it may have created.
RECONCILE_LOOKUPS = 3
RECONCILE_PAUSE = 1.0
# find_orphaned_batch reads at most this many tagged batches (newest first).
ORPHAN_SCAN_LIMIT = 500
# created_at is whole seconds, the intent record has microseconds and clocks differ.
CLOCK_SKEW_SLACK = 300
# Identifies this adapter's batches in ds_description: "common.ai <key16> <fingerprint16>".
DESCRIPTION_PREFIX = "common.ai"
# Limit rules of the validator that mean "split the input", not "fix a line".
_LIMIT_RULES = frozenset({"too_many_lines", "file_too_large", "line_too_large"})

_STATUS: dict[str, BatchStatus] = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}


def tag_for(idempotency_key: str) -> BatchTag:
    """The provider's tag for the task instance that common.ai's ``idempotency_key`` names.

    The adapter is given only ``api_key`` and ``base_url``; the running task's context names
    the dag, run, task and map index. The context is used only when it is the task instance
    the key was computed from (common.ai's key16 of the same four values); otherwise (a script,
    a test) the tag is derived from the key alone, which still re-attaches but is not found by
    the run clean-up.

    :param idempotency_key: common.ai's 16-hex key of the task instance.
    """
    try:
        from airflow.providers.common.ai.batch import state
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        key = state.compute_identity_key(
            dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=map_index
        )
        if state.key16(key) == idempotency_key:
            return BatchTag(ti.dag_id, ti.run_id, ti.task_id, map_index)
    except Exception:  # no task context here: fall back to the key, which is stable too
        pass
    return BatchTag("common.ai", idempotency_key, "llm_batch")


def describe(idempotency_key: str, input_fingerprint: str) -> str:
    """The ``ds_description`` recording common.ai's key and fingerprint (<= 200 characters).

    :param idempotency_key: common.ai's 16-hex key.
    :param input_fingerprint: common.ai's input fingerprint (its first 16 characters are kept).
    """
    return f"{DESCRIPTION_PREFIX} {idempotency_key} {input_fingerprint[:16]}"


class QwenBatchAdapter(BatchAdapter):
    """Batch adapter for Qwen Cloud (Alibaba DashScope), model prefix ``alibaba``.

    .. note::

        common.ai's batch adapter API is experimental in 1.0.0.

    :param api_key: the DashScope key (the Connection's password); ``None`` falls back to
        ``DASHSCOPE_API_KEY``, like pydantic-ai.
    :param base_url: the Connection's host: a region's compatible-mode URL, a Singapore
        workspace URL, or an emulator's. ``None`` is Singapore (pydantic-ai's default). The
        region (for the model list) is taken from it.
    :param client: a pre-built :class:`~..client.sync.BatchClient` (tests).
    """

    name = "alibaba"
    conn_types = frozenset({"pydanticai"})
    max_requests = MAX_LINES
    max_payload_bytes = MAX_FILE_BYTES
    allows_per_request_model = False

    def __init__(
        self, *, api_key: str | None = None, base_url: str | None = None, client: Any | None = None
    ) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.region = region_of_base_url(self.base_url)
        if client is None:
            from airflow_provider_qwenbatch.client.sync import BatchClient

            key = api_key or os.environ.get(API_KEY_ENV, "")
            if key and not api_key:
                # Airflow masks a Connection's password itself; a key from the environment is masked here.
                from airflow_provider_qwenbatch.compat import mask_secret

                mask_secret(key)
            client = BatchClient(key, self.base_url, logger=log)
        self._client: BatchClient = client

    def __repr__(self) -> str:
        return f"QwenBatchAdapter(base_url={self.base_url!r})"

    # ---- requests -------------------------------------------------------------------------

    def _lines(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        directive: dict[str, Any],
        system_prompt: str,
        max_tokens: int,
        request_params: dict[str, Any] | None,
    ) -> Iterator[dict[str, Any]]:
        for index, request in enumerate(requests):
            messages = []
            effective_system_prompt = request.get("system_prompt") or system_prompt
            if effective_system_prompt:
                messages.append({"role": "system", "content": effective_system_prompt})
            messages.append({"role": "user", "content": request["prompt"]})
            resolved = self.resolve_request_model(
                request.get("model"), default_bare_model=model, request_index=index
            )
            # User params first, then the keys the adapter manages, as common.ai's own adapters.
            # max_completion_tokens: DashScope deprecated max_tokens in compatible mode (2026-05).
            body: dict[str, Any] = {
                **(request_params or {}),
                **(request.get("params") or {}),
                "model": resolved,
                "messages": messages,
                "max_completion_tokens": request.get("max_tokens") or max_tokens,
                **directive,
            }
            body.pop("max_tokens", None)
            yield {"custom_id": f"{idempotency_key}-{index}", "method": "POST", "url": ENDPOINT, "body": body}

    def _write(self, requests: list[BatchRequest], path: Path, **kwargs: Any) -> InputSummary:
        """Write the JSONL input, checked line by line by the provider's validator."""
        if len(requests) > self.max_requests:
            raise LLMBatchLimitExceededError(
                f"DashScope batch accepts at most {self.max_requests} requests per batch; got "
                f"{len(requests)}. Split the input with .expand() so each mapped task instance "
                f"submits at most {self.max_requests}."
            )
        try:
            return write_jsonl(
                self._lines(requests, **kwargs), path, ENDPOINT, source="@task.llm_batch requests"
            )
        except InputValidationError as exc:
            rules = {p.rule for p in exc.problems}
            if rules & _LIMIT_RULES:
                raise LLMBatchLimitExceededError(f"{exc}. Split the input with .expand().") from None
            if "mismatched_model" in rules:
                raise LLMBatchModelMismatchError(
                    f"{exc}. DashScope takes one model per batch file."
                ) from None
            raise LLMBatchInputError(str(exc)) from None

    def build_output_directive(self, spec: OutputSpec) -> dict[str, Any]:
        """``response_format`` ``json_schema`` (supported by qwen-plus and others); ``{}`` for ``str``.

        :param spec: common.ai's output spec.
        """
        if not spec.is_structured:
            return {}
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": spec.schema_name, "schema": spec.json_schema, "strict": False},
            }
        }

    def validate_requests(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        output_spec: OutputSpec,
        idempotency_key: str,
        system_prompt: str = "",
        max_tokens: int = 1024,
        request_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Check every request against DashScope's rules before any network call.

        :param requests: common.ai's normalised requests.
        :param model: the bare model name.
        :param output_spec: the output spec (its directive counts in each line's size).
        :param idempotency_key: common.ai's key (the ``custom_id`` prefix).
        :param system_prompt: batch-level system prompt.
        :param max_tokens: batch-level output cap.
        :param request_params: extra body parameters.
        :param kwargs: ignored (common.ai may pass more context).
        :raises LLMBatchInputError: naming the request (line), the field and the rule.
        """
        self.check_custom_id_length(idempotency_key, len(requests))
        with tempfile.TemporaryDirectory(prefix="qwenbatch-common-ai-") as tmp:
            self._write(
                requests,
                Path(tmp) / "check.jsonl",
                model=model,
                idempotency_key=idempotency_key,
                directive=self.build_output_directive(output_spec),
                system_prompt=system_prompt,
                max_tokens=max_tokens,
                request_params=request_params,
            )

    # ---- submit ---------------------------------------------------------------------------

    def submit(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        input_fingerprint: str,
        output_spec: OutputSpec,
        system_prompt: str = "",
        max_tokens: int = 1024,
        request_params: dict[str, Any] | None = None,
        completion_window: str = "24h",
        **kwargs: Any,
    ) -> SubmitResult:
        """Validate, upload, and create exactly one batch, even when the create's reply is lost.

        :param requests: common.ai's normalised requests.
        :param model: the bare model name.
        :param idempotency_key: common.ai's key of the task instance.
        :param input_fingerprint: common.ai's fingerprint of this input.
        :param output_spec: the output spec.
        :param system_prompt: batch-level system prompt.
        :param max_tokens: batch-level output cap.
        :param request_params: extra body parameters.
        :param completion_window: ``24h`` to ``336h``.
        :param kwargs: ignored.
        """
        tag = tag_for(idempotency_key)
        with tempfile.TemporaryDirectory(prefix="qwenbatch-common-ai-") as tmp:
            path = Path(tmp) / f"{idempotency_key}.jsonl"
            summary = self._write(
                requests,
                path,
                model=model,
                idempotency_key=idempotency_key,
                directive=self.build_output_directive(output_spec),
                system_prompt=system_prompt,
                max_tokens=max_tokens,
                request_params=request_params,
            )
            warn_if_model_not_in_region(summary, self.base_url, log)
            uploaded = self._client.upload_file(path)
        log.info("Uploaded input file %s (x-request-id=%s)", uploaded.id, uploaded.x_request_id)
        metadata = {"ds_name": tag.ds_name(), "ds_description": describe(idempotency_key, input_fingerprint)}
        try:
            batch = self._client.create_batch(uploaded.id, ENDPOINT, completion_window, metadata)
        except (BadRequestError, AuthenticationError, NotFoundError, RateLimitError):
            raise  # the server answered and refused: nothing was created
        except QwenBatchError as exc:
            log.warning(
                "Creating the batch gave no usable answer (%s); looking it up by tag %s instead of "
                "creating a second one",
                exc,
                tag.value,
            )
            found = self.find_created(tag, uploaded.id)
            if found is None:
                raise
            batch = found
            log.info("Found batch %s created by the lost request; no second batch", batch.id)
        log.info("Created batch %s (tag %s, x-request-id=%s)", batch.id, tag.value, batch.x_request_id)
        return SubmitResult(batch_id=batch.id, provider_input_ref=uploaded.id)

    def find_created(self, tag: BatchTag, input_file_id: str) -> Batch | None:
        """The batch a create with a lost reply made: this tag, this (fresh) input file.

        :param tag: the task instance's tag.
        :param input_file_id: the file uploaded just before, so no other batch can match.
        """
        for attempt in range(RECONCILE_LOOKUPS):
            for batch in self._client.iter_batches(ds_name=tag.value, input_file_ids=[input_file_id]):
                if (
                    tag.matches((batch.metadata or {}).get("ds_name"))
                    and batch.input_file_id == input_file_id
                ):
                    return batch
            if attempt + 1 < RECONCILE_LOOKUPS:
                time.sleep(RECONCILE_PAUSE)
        return None

    def find_orphaned_batch(
        self, idempotency_key: str, input_fingerprint: str, not_before: str
    ) -> str | None:
        """The newest tagged batch whose ``ds_description`` holds this key and fingerprint.

        Searched server-side by the tag in ``ds_name`` (a substring filter), then checked exactly.

        :param idempotency_key: common.ai's key.
        :param input_fingerprint: common.ai's fingerprint.
        :param not_before: ISO 8601 time of common.ai's intent record.
        """
        tag = tag_for(idempotency_key)
        wanted = describe(idempotency_key, input_fingerprint)
        floor = (
            math.floor(datetime.fromisoformat(not_before).timestamp()) - CLOCK_SKEW_SLACK if not_before else 0
        )
        best: Batch | None = None
        for scanned, batch in enumerate(self._client.iter_batches(ds_name=tag.value)):
            if scanned >= ORPHAN_SCAN_LIMIT:
                log.warning("Stopped looking for an orphaned batch after %d batches", ORPHAN_SCAN_LIMIT)
                break
            meta = batch.metadata or {}
            if not tag.matches(meta.get("ds_name")) or meta.get("ds_description") != wanted:
                continue
            if (batch.created_at or 0) < floor:
                continue
            if best is None or (batch.created_at or 0) > (best.created_at or 0):
                best = batch
        return best.id if best is not None else None

    # ---- status, cancel, results ----------------------------------------------------------

    def get_batch(self, batch_id: str) -> BatchState:
        """The batch's status in common.ai's vocabulary, with counts.

        :param batch_id: the batch id.
        """
        batch = self._client.retrieve_batch(batch_id)
        status = batch.status.value
        counts = batch.counts
        remainder = max(counts.total - counts.completed - counts.failed, 0)
        return BatchState(
            status=_STATUS.get(status, "in_progress"),
            counts={
                "succeeded": counts.completed,
                "errored": counts.failed,
                "expired": remainder if status == "expired" else 0,
                "cancelled": remainder if status == "cancelled" else 0,
            },
            error_message=batch.describe_errors() if batch.error_list else None,
        )

    def cancel_batch(self, batch_id: str) -> None:
        """Cancel within the kill budget (a few seconds); a batch already ended is left alone.

        :param batch_id: the batch id.
        :raises QwenBatchError: when the cancel could not be confirmed (common.ai logs it).
        """
        from airflow_provider_qwenbatch.client.cancel import DEFAULT_KILL_BUDGET, cancel_quietly

        outcome = cancel_quietly(self._client, batch_id, budget=DEFAULT_KILL_BUDGET, logger=log)
        if not outcome.ok:
            raise QwenBatchError(
                f"cancelling batch {batch_id} failed: {outcome.detail}", request_id=outcome.request_id
            )

    def iter_results(self, batch_id: str) -> Iterator[RawResultItem]:
        """Stream the output file, then the error file, one line at a time.

        :param batch_id: the batch id (read now, so a wrong id raises here).
        """
        batch = self._client.retrieve_batch(batch_id)
        return self._stream(batch)

    def _stream(self, batch: Batch) -> Iterator[RawResultItem]:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for n, text in enumerate(self._client.iter_file_lines(file_id), start=1):
                if not text.strip():
                    continue
                try:
                    yield parse_result_line(BatchResultLine.model_validate_json(text))
                except ValueError as exc:
                    # One bad line must not lose the others; common.ai counts it as "missing".
                    log.warning(
                        "Skipping unreadable line %d of file %s (batch %s): %s", n, file_id, batch.id, exc
                    )

    def extract_output(self, raw: RawResultItem, spec: OutputSpec) -> ExtractedOutput:
        """The answer's text, or its JSON text for a structured ``output_type``.

        :param raw: one parsed result.
        :param spec: the output spec.
        """
        if raw.raw is None:
            return ExtractedOutput(kind="absent")
        if not spec.is_structured:
            return ExtractedOutput(kind="text", text=raw.raw)
        return ExtractedOutput(kind="json_text", text=raw.raw)
