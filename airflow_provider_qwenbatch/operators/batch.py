"""Operators for the Qwen Cloud (DashScope) Batch API: submit, cancel, download results."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from pydantic import ValidationError

from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.client.window import parse_completion_window
from airflow_provider_qwenbatch.exceptions import (
    BatchFailedError,
    BatchInputError,
    BatchTimeoutError,
    QwenBatchAirflowError,
    as_airflow_errors,
)
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.links import CONSOLE_URL_XCOM_KEY, QwenBatchConsoleLink
from airflow_provider_qwenbatch.summary import ProgressReporter, batch_summary, describe_end
from airflow_provider_qwenbatch.task_connection import QwenBatchConnectionMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.models import Batch, BatchCreateRequest
    from airflow_provider_qwenbatch.client.results import ResultCounts
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.inputs import PreparedInput

# The client, the trigger and the input helpers are imported inside the methods that use them:
# a DAG file that imports these operators is parsed often, and should not pay for them.

BATCH_ID_XCOM_KEY = "batch_id"
# Cancel requests from a task's own failure path may wait a little longer than a kill path.
_CANCEL_BUDGET = 15.0


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _QwenBatchBaseOperator(QwenBatchConnectionMixin, BaseOperator):
    """Shared Connection handling (see :class:`QwenBatchConnectionMixin`)."""

    def __init__(self, *, conn_id: str = QwenBatchHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._settings = None


class SubmitBatchOperator(_QwenBatchBaseOperator):
    """Submit a batch job to Qwen Cloud and (by default) wait for it, without a second paid batch on retry.

    Input is exactly one of ``requests`` (a list of request dicts, e.g. from XCom),
    ``input_path`` (a JSONL path or ObjectStoragePath URI) or ``input_file_id`` (already
    uploaded, or an OSS URL). Files are validated in full before anything is uploaded.

    The batch is tagged in ``metadata.ds_name`` with a hash of dag, run, task and map index;
    a retry re-attaches to the batch of an earlier try (unless that one ended failed, expired
    or cancelled). The batch id and console URL go to XCom as soon as the batch exists.

    :param endpoint: ``/v1/chat/completions``, ``/v1/embeddings`` or ``/v1/chat/ds-test``.
    :param requests: request dicts ``{custom_id, body}`` (``method``/``url`` default to POST/endpoint).
    :param input_path: JSONL file: local path, ``file://``, ``s3://``, ``oss://``...
    :param input_file_id: an uploaded file id, OSS presigned URL or ``oss:{region}:{bucket}/{path}``.
    :param input_conn_id: Airflow Connection of the object store holding ``input_path``.
    :param completion_window: ``24h`` to ``336h`` (``1d`` to ``14d``).
    :param metadata: ``ds_name`` (kept beside the provider's tag), ``ds_description``, ``ds_batch_finish_callback``.
    :param conn_id: the ``qwen_batch`` Connection.
    :param wait_for_completion: wait until the batch is terminal (default True).
    :param deferrable: wait in the triggerer instead of holding a worker slot.
    :param poll_interval: seconds between status reads (default 60, the API's guidance).
    :param timeout: cancel the batch and fail when it runs longer than this (seconds or timedelta).
    :param cancel_on_kill: cancel the batch when the task is killed (default True).
    :param reattach: on a retry, re-attach to the batch of an earlier try (default True).
    :param delete_input_file: delete the uploaded input file once the batch ends (quota: 10,000 files).
    """

    template_fields: Sequence[str] = (
        "requests",
        "input_path",
        "input_file_id",
        "endpoint",
        "completion_window",
        "metadata",
    )
    template_ext: Sequence[str] = ()
    operator_extra_links = (QwenBatchConsoleLink(),)
    ui_color = "#6f42c1"

    def __init__(
        self,
        *,
        endpoint: str = "/v1/chat/completions",
        requests: Sequence[Mapping[str, Any]] | str | None = None,
        input_path: str | None = None,
        input_file_id: str | None = None,
        input_conn_id: str | None = None,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        conn_id: str = QwenBatchHook.default_conn_name,
        wait_for_completion: bool = True,
        deferrable: bool = _default_deferrable(),
        poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_kill: bool = True,
        reattach: bool = True,
        delete_input_file: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        given = [
            n
            for n, v in (("requests", requests), ("input_path", input_path), ("input_file_id", input_file_id))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self.task_id}: give exactly one of requests, input_path, input_file_id (got {given or 'none'})"
            )
        if poll_interval <= 0:
            raise ValueError(f"{self.task_id}: poll_interval must be positive, got {poll_interval}")
        self.endpoint = endpoint
        self.requests = requests
        self.input_path = input_path
        self.input_file_id = input_file_id
        self.input_conn_id = input_conn_id
        self.completion_window = completion_window
        self.metadata = metadata
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)
        self.cancel_on_kill = cancel_on_kill
        self.reattach = reattach
        self.delete_input_file = delete_input_file
        self.batch_id: str | None = None
        self._killed = False
        if "{{" not in completion_window:
            self._check_window()

    # ---- checks before anything is uploaded -----------------------------------------------

    def _check_window(self) -> None:
        try:
            parse_completion_window(self.completion_window)
        except ValueError as exc:
            raise BatchInputError(f"{self.task_id}: {exc}") from None

    def _create_request(self, tag: BatchTag, input_file_id: str) -> BatchCreateRequest:
        from airflow_provider_qwenbatch.client.models import BatchCreateRequest

        if self.metadata is not None and not isinstance(self.metadata, Mapping):
            raise BatchInputError(
                f"{self.task_id}: invalid batch parameters: metadata must be a dict, "
                f"got {type(self.metadata).__name__}"
            )
        metadata = dict(self.metadata or {})
        user_name = metadata.get("ds_name")
        if user_name is not None and not isinstance(user_name, str):
            raise BatchInputError(
                f"{self.task_id}: invalid batch parameters: metadata.ds_name must be a string, "
                f"got {type(user_name).__name__}"
            )
        metadata["ds_name"] = tag.ds_name(user_name)
        try:
            return BatchCreateRequest(
                input_file_id=input_file_id,
                endpoint=self.endpoint,
                completion_window=self.completion_window,
                metadata=metadata,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".replace("Value error, ", "")
                for e in exc.errors()
            )
            raise BatchInputError(f"{self.task_id}: invalid batch parameters: {problems}") from None

    def _prepare_input(self) -> PreparedInput | None:
        from airflow_provider_qwenbatch.inputs import prepare_path, prepare_requests

        with as_airflow_errors():
            if self.requests is not None:
                if isinstance(self.requests, str):
                    raise BatchInputError(
                        f"{self.task_id}: requests rendered to a string, not a list; use render_template_as_native_obj=True "
                        "on the DAG or pass the XComArg itself"
                    )
                return prepare_requests(self.requests, self.endpoint)
            if self.input_path is not None:
                return prepare_path(self.input_path, self.endpoint, self.input_conn_id)
        return None

    # ---- execute --------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate, upload, create (or re-attach), then wait as configured."""
        from airflow_provider_qwenbatch.client.cancel import DEFAULT_KILL_BUDGET, cancel_quietly
        from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

        started = time.monotonic()
        ti = context["ti"]
        tag = BatchTag(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)
        self._check_window()
        # Metadata and endpoint checked with a placeholder id: nothing is uploaded before they pass.
        self._create_request(tag, self.input_file_id or "file-placeholder")
        client = self._client()
        with client, as_airflow_errors():
            batch = self._find_earlier(client, tag, ti.try_number)
            if batch is None:
                batch = self._submit(client, tag)
            self.batch_id = batch.id
            self._publish(context, batch)
            if self._killed and self.cancel_on_kill:
                # on_kill ran while the batch was being created and found nothing to cancel.
                outcome = cancel_quietly(client, batch.id, budget=DEFAULT_KILL_BUDGET, logger=self.log)
                raise QwenBatchAirflowError(
                    f"{self.task_id}: killed while creating batch {batch.id}; cancel: {outcome.action.value}"
                )
            if not self.wait_for_completion:
                return batch_summary(batch, console_url=self._console_url(batch.id))
            deadline = (batch.created_at or time.time()) + self.timeout if self.timeout else None
            if self.deferrable and not batch.status.is_terminal:
                self.defer(
                    trigger=BatchStatusTrigger(
                        batch_id=batch.id,
                        conn_id=self.conn_id,
                        poll_interval=self.poll_interval,
                        deadline=deadline,
                        cancel_on_kill=self.cancel_on_kill,
                    ),
                    method_name="execute_complete",
                    timeout=self._defer_timeout(started),
                )
            batch = self._wait(client, batch, deadline)
            return self._finish(client, batch)

    def _defer_timeout(self, started: float) -> timedelta | None:
        # Airflow 3 bounds only execute() by execution_timeout, not the time deferred: pass what is
        # left of it as the trigger timeout, so resume_execution("__fail__") cancels the batch.
        if self.execution_timeout is None:
            return None
        left = self.execution_timeout - timedelta(seconds=time.monotonic() - started)
        return max(left, timedelta(0))

    def _find_earlier(self, client: BatchClient, tag: BatchTag, try_number: int | None) -> Batch | None:
        if not self.reattach or (try_number or 1) <= 1:
            return None
        from airflow_provider_qwenbatch.client.lookup import find_batch_for_task

        batch = find_batch_for_task(client, tag, self.input_file_id)
        if batch is not None:
            self.log.info(
                "Try %s re-attaches to batch %s (%s) created by an earlier try; no new batch is created",
                try_number,
                batch.id,
                batch.status.value,
            )
        return batch

    def _submit(self, client: BatchClient, tag: BatchTag) -> Batch:
        prepared = self._prepare_input()
        try:
            if prepared is not None:
                s = prepared.summary
                self.log.info(
                    "Input valid: %d requests, %d bytes, model %s; uploading",
                    s.lines,
                    s.bytes,
                    s.model or "?",
                )
                uploaded = client.upload_file(prepared.path)
                input_file_id = uploaded.id
                self.log.info(
                    "Uploaded input file %s (x-request-id=%s)", input_file_id, uploaded.x_request_id
                )
            else:
                assert self.input_file_id is not None
                input_file_id = self.input_file_id
        finally:
            if prepared is not None:
                prepared.discard()
        request = self._create_request(tag, input_file_id)
        batch = client.create_batch(
            request.input_file_id, request.endpoint, request.completion_window, request.metadata
        )
        self.log.info(
            "Created batch %s (%s, tag %s, x-request-id=%s)",
            batch.id,
            batch.status.value,
            tag.value,
            batch.x_request_id,
        )
        return batch

    def _console_url(self, batch_id: str) -> str:
        assert self._settings is not None
        return self._settings.console_url(batch_id)

    def _publish(self, context: Context, batch: Batch) -> None:
        # Pushed at once, so links and clean-up can find the batch even if the task dies next.
        ti = context["ti"]
        ti.xcom_push(key=BATCH_ID_XCOM_KEY, value=batch.id)
        ti.xcom_push(key=CONSOLE_URL_XCOM_KEY, value=self._console_url(batch.id))

    def _wait(self, client: BatchClient, batch: Batch, deadline: float | None) -> Batch:
        from airflow_provider_qwenbatch.client.cancel import cancel_quietly

        progress = ProgressReporter(self.log)
        progress.update(batch)
        while not batch.status.is_terminal:
            wait = self.poll_interval
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    outcome = cancel_quietly(client, batch.id, budget=_CANCEL_BUDGET, logger=self.log)
                    raise BatchTimeoutError(
                        f"{self.task_id}: batch {batch.id} still {batch.status.value} after the timeout of "
                        f"{self.timeout:.0f}s; cancel: {outcome.action.value} (x-request-id={outcome.request_id or 'none'})"
                    )
                wait = min(wait, left)
            time.sleep(wait)
            batch = client.retrieve_batch(batch.id)
            progress.update(batch)
        return batch

    def _finish(self, client: BatchClient, batch: Batch) -> dict[str, Any]:
        if self.delete_input_file and batch.input_file_id:
            try:
                client.delete_file(batch.input_file_id)
                self.log.info("Deleted input file %s", batch.input_file_id)
            except Exception as exc:  # the batch's result matters more than the quota
                self.log.warning("Could not delete input file %s: %s", batch.input_file_id, exc)
        if not batch.status.is_success:
            raise BatchFailedError(describe_end(batch), batch.id, batch.status.value)
        self.log.info(describe_end(batch))
        return batch_summary(batch, console_url=self._console_url(batch.id))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: validate its event, then finish like the worker path."""
        from airflow_provider_qwenbatch.triggers.batch import parse_event

        payload = parse_event(event)
        self.batch_id = payload.batch_id
        if payload.status == "timeout":
            raise BatchTimeoutError(f"{self.task_id}: {payload.message}")
        if payload.status == "error":
            raise QwenBatchAirflowError(f"{self.task_id}: {payload.message}")
        client = self._client()
        with client, as_airflow_errors():
            # Re-read: the event is a summary, and the final state decides.
            return self._finish(client, client.retrieve_batch(payload.batch_id))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """When the trigger failed or timed out (``execution_timeout`` while deferred), cancel the batch first."""
        if next_method == "__fail__" and self.cancel_on_kill:
            batch_id = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key=BATCH_ID_XCOM_KEY)
            if isinstance(batch_id, str):
                self._resolve_settings()  # the kill-path client is built from them
                self._cancel_on_kill(batch_id)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        """Cancel the batch quietly (well under the 5 s before SIGKILL).

        Killed while the batch was being created: nothing is known yet to cancel, so the flag
        set here makes ``execute`` cancel the batch as soon as the create call returns.
        """
        self._killed = True
        if self.cancel_on_kill:
            self._cancel_on_kill(self.batch_id)


class CancelBatchOperator(_QwenBatchBaseOperator):
    """Cancel one or many batches; idempotent (a batch already ended is reported, not an error).

    Returns ``{batch_id: final status}``.

    :param batch_ids: a batch id or a list of them (templated).
    :param conn_id: the ``qwen_batch`` Connection.
    :param wait_for_termination: wait until each batch is terminal (``cancelled`` follows ``cancelling`` in tens of seconds).
    :param poll_interval: seconds between reads while waiting.
    :param wait_timeout: give up waiting after this many seconds (the cancel stays requested).
    :param fail_on_error: fail the task when a cancel request could not be sent.
    """

    template_fields: Sequence[str] = ("batch_ids",)

    def __init__(
        self,
        *,
        batch_ids: str | Sequence[str],
        conn_id: str = QwenBatchHook.default_conn_name,
        wait_for_termination: bool = False,
        poll_interval: float = 10.0,
        wait_timeout: float | None = 600.0,
        fail_on_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.batch_ids = batch_ids
        self.wait_for_termination = wait_for_termination
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.fail_on_error = fail_on_error

    def _ids(self) -> list[str]:
        raw = self.batch_ids
        ids = [raw] if isinstance(raw, str) else list(raw or [])
        return [i for i in (str(x).strip() for x in ids) if i]

    def execute(self, context: Context) -> dict[str, str | None]:
        """Cancel each batch quietly, then optionally wait for each to be terminal."""
        from airflow_provider_qwenbatch.client.cancel import cancel_quietly

        ids = self._ids()
        client = self._client()
        results: dict[str, str | None] = {}
        failures: list[str] = []
        failed_ids: set[str] = set()
        with client, as_airflow_errors():
            for n, batch_id in enumerate(ids, start=1):
                outcome = cancel_quietly(client, batch_id, budget=_CANCEL_BUDGET, logger=self.log)
                results[batch_id] = outcome.status.value if outcome.status else None
                if not outcome.ok:
                    failures.append(f"{batch_id}: {outcome.detail}")
                    failed_ids.add(batch_id)
                self.log.info(
                    "Cancel requested for %d/%d batches (%d%%)", n, len(ids), 100 * n // max(1, len(ids))
                )
            if self.wait_for_termination:
                results.update(self._wait_all([i for i in ids if i not in failed_ids], client))
        if failures and self.fail_on_error:
            raise QwenBatchAirflowError(f"{self.task_id}: could not cancel: " + "; ".join(failures))
        return results

    def _wait_all(self, ids: list[str], client: BatchClient) -> dict[str, str | None]:
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        pending = set(ids)
        final: dict[str, str | None] = {}
        while pending:
            for batch_id in sorted(pending):
                batch = client.retrieve_batch(batch_id)
                final[batch_id] = batch.status.value
                if batch.status.is_terminal:
                    pending.discard(batch_id)
            if not pending:
                break
            self.log.info(
                "%d of %d batches terminal; waiting for %d", len(ids) - len(pending), len(ids), len(pending)
            )
            if deadline is not None and time.monotonic() >= deadline:
                self.log.warning(
                    "Stopped waiting after %.0fs; still not terminal: %s", self.wait_timeout, sorted(pending)
                )
                break
            time.sleep(self.poll_interval)
        return final


class DownloadBatchResultsOperator(_QwenBatchBaseOperator):
    """Stream a batch's output and error files to a destination, and count results line by line.

    Every line's own status is checked: the output file can hold non-200 lines while
    ``request_counts.failed`` says 0. Files are written as ``<destination>/<batch_id>/output.jsonl``
    and ``.../errors.jsonl``. Returns paths, counts and token totals.

    :param batch_id: the batch (templated), e.g. ``{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}``.
    :param destination: a folder: local path or ObjectStoragePath URI (templated).
    :param conn_id: the ``qwen_batch`` Connection.
    :param destination_conn_id: Airflow Connection of the object store, if it needs one.
    :param max_failed_ratio: fail the task when failed lines / all lines exceeds this (0..1); files are kept.
    :param max_failed_lines: fail the task when more lines than this failed; files are kept.
    :param delete_remote_files: delete the result files on the server after a successful download
        (the account keeps at most 10,000 files, forever).
    """

    template_fields: Sequence[str] = ("batch_id", "destination")

    def __init__(
        self,
        *,
        batch_id: str,
        destination: str,
        conn_id: str = QwenBatchHook.default_conn_name,
        destination_conn_id: str | None = None,
        max_failed_ratio: float | None = None,
        max_failed_lines: int | None = None,
        delete_remote_files: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        if max_failed_ratio is not None and not 0 <= max_failed_ratio <= 1:
            raise ValueError(f"{self.task_id}: max_failed_ratio must be within 0..1, got {max_failed_ratio}")
        self.batch_id = batch_id
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.max_failed_ratio = max_failed_ratio
        self.max_failed_lines = max_failed_lines
        self.delete_remote_files = delete_remote_files

    def execute(self, context: Context) -> dict[str, Any]:
        """Download, count, check the thresholds, then optionally delete the remote files."""
        from airflow_provider_qwenbatch.client.results import ResultCounts, count_results
        from airflow_provider_qwenbatch.inputs import store_file

        client = self._client()
        with client, as_airflow_errors():
            batch = client.retrieve_batch(self.batch_id)
            if not batch.status.is_terminal:
                raise QwenBatchAirflowError(
                    f"{self.task_id}: batch {batch.id} is still {batch.status.value}; wait for it first"
                )
            totals = ResultCounts()
            paths: dict[str, str | None] = {"output_path": None, "error_path": None}
            files = [
                ("output_path", batch.output_file_id, "output.jsonl"),
                ("error_path", batch.error_file_id, "errors.jsonl"),
            ]
            with tempfile.TemporaryDirectory(prefix="qwenbatch-results-") as tmp:
                for key, file_id, name in files:
                    if not file_id:
                        continue
                    local = Path(tmp) / name
                    client.download_file(file_id, local)
                    counts = count_results(local)
                    self.log.info(
                        "%s: %d lines, %d succeeded, %d failed",
                        name,
                        counts.lines,
                        counts.succeeded,
                        counts.failed,
                    )
                    totals.add(counts)
                    paths[key] = store_file(
                        local, f"{self.destination.rstrip('/')}/{batch.id}", self.destination_conn_id
                    )
            summary: dict[str, Any] = {
                "batch_id": batch.id,
                "status": batch.status.value,
                **paths,
                "lines": totals.lines,
                "succeeded": totals.succeeded,
                "failed": totals.failed,
                "tokens": {
                    "prompt": totals.prompt_tokens,
                    "completion": totals.completion_tokens,
                    "total": totals.total_tokens,
                },
                "failed_examples": totals.failed_examples,
                "deleted_files": [],
            }
            self.log.info(
                "Batch %s results: %d lines, %d succeeded, %d failed, %d tokens",
                batch.id,
                totals.lines,
                totals.succeeded,
                totals.failed,
                totals.total_tokens,
            )
            self._check_thresholds(batch.id, totals)
            if self.delete_remote_files:
                summary["deleted_files"] = self._delete(client, [f for _, f, _ in files if f])
            return summary

    def _check_thresholds(self, batch_id: str, totals: ResultCounts) -> None:
        ratio = totals.failed / totals.lines if totals.lines else 0.0
        too_many = self.max_failed_lines is not None and totals.failed > self.max_failed_lines
        too_high = self.max_failed_ratio is not None and ratio > self.max_failed_ratio
        if too_many or too_high:
            examples = "; ".join(f"{e['custom_id']}: {e['error']}" for e in totals.failed_examples)
            raise QwenBatchAirflowError(
                f"{self.task_id}: batch {batch_id} has {totals.failed} failed lines of {totals.lines} "
                f"({ratio:.1%}), over the threshold (max_failed_lines={self.max_failed_lines}, "
                f"max_failed_ratio={self.max_failed_ratio}); files were kept. First failures: {examples}"
            )

    def _delete(self, client: BatchClient, file_ids: list[str]) -> list[str]:
        deleted = []
        for file_id in file_ids:
            try:
                client.delete_file(file_id)
                deleted.append(file_id)
            except Exception as exc:  # results are safe locally; a leftover file only costs quota
                self.log.warning("Could not delete remote file %s: %s", file_id, exc)
        return deleted
