"""SubmitBatchOperator: validate, upload, create (or re-attach to) a batch, and wait for it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from airflow_provider_qwenbatch.client.endpoints import check_endpoint
from airflow_provider_qwenbatch.client.identity import BatchTag, InputFingerprint, ShardLabel
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
from airflow_provider_qwenbatch.operators._abort import SubmitAbortPaths
from airflow_provider_qwenbatch.operators._base import (
    BATCH_ID_XCOM_KEY,
    DEFAULT_MAX_ACTIVE_BATCHES,
    MAX_UNFINISHED_BATCHES,
    QwenBatchBaseOperator,
    check_counts,
    default_deferrable,
    seconds,
    tag_of,
)
from airflow_provider_qwenbatch.operators._single import SingleBatchPath
from airflow_provider_qwenbatch.summary import batch_summary, describe_end

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.models import Batch, BatchCreateRequest
    from airflow_provider_qwenbatch.client.shards import ShardPlan
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.inputs import PreparedInput
    from airflow_provider_qwenbatch.lineage import Lineage

# The client, the trigger and the input helpers are imported inside the methods that use them:
# a DAG file that imports these operators is parsed often, and should not pay for them.


class SubmitBatchOperator(SingleBatchPath, SubmitAbortPaths, QwenBatchBaseOperator):
    """Submit a batch job to Qwen Cloud and (by default) wait for it, without a second paid batch on retry.

    Input is exactly one of ``requests`` (request dicts: a list, a generator, or the XComArg of a
    task returning a list), ``input_path`` (a JSONL path or ObjectStoragePath URI, of any size) or
    ``input_file_id`` (already uploaded, or an OSS URL). Input is validated in full before anything
    is uploaded, and split in the same streaming pass into shards that each fit one batch (50,000
    lines, 500 MB; the test model's 100 lines / 1 MB; ``max_lines_per_batch``). ``requests`` is not
    templated: prompts reach the server byte for byte, ``{{ ... }}`` included.

    An input of one shard runs as one batch (return value: that batch's summary). More shards run
    as one job of many batches (see :mod:`._sharded`): at most ``max_active_batches`` unfinished at
    once, every kill path cancelling every unfinished shard, a retry re-attaching shard by shard;
    the return value is the job summary (``kind: sharded``, ``batch_ids``, ``shards``) that
    ``DownloadBatchResultsOperator(job=...)`` merges into one result.

    The batch is tagged in ``metadata.ds_name`` with a hash of dag, run, task and map index and
    a fingerprint of its input (content hash, endpoint, completion window, model; or the given
    file id). A retry or clear re-attaches to the batch of an earlier try when the input is the
    same and that batch is running or completed; otherwise it creates a new one, cancelling an
    earlier one still running from other input. The batch id and console URL go to XCom as soon
    as the batch exists.

    :param endpoint: ``/v1/chat/completions``, ``/v1/embeddings`` or ``/v1/chat/ds-test``.
    :param requests: request dicts ``{custom_id, body}`` (``method``/``url`` default to POST/endpoint),
        or an XComArg resolving to them; never Jinja-rendered.
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
    :param reattach: on a retry or clear, re-attach to the batch of an earlier try of the same input (default True).
    :param delete_input_file: delete the uploaded input file once the batch ends (quota: 10,000 files).
    :param max_lines_per_batch: at most this many requests per batch (1..50,000): smaller shards finish sooner.
    :param max_active_batches: at most this many of the task's batches unfinished at once (the account
        allows 1,000 unfinished batches in all); more are created as earlier ones end.
    :param resubmit_failed: rounds of sending again the requests that failed for a retryable reason
        (server error, timeout, left unprocessed by an expired or cancelled batch); never content
        or validation errors. 0 (default): none.
    :param max_input_tokens: refuse the input before upload when its estimated prompt tokens exceed this.
    :param strict_cost: refuse (instead of warning about) requests that bill more than they seem to:
        a qwen3.5/3.6/3.7 model without ``enable_thinking``, or the deprecated ``max_tokens``.
    """

    # Not "requests": every string in it would go through Jinja (prompts changed, secrets pulled in).
    template_fields: Sequence[str] = (
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
        deferrable: bool = default_deferrable(),
        poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_kill: bool = True,
        reattach: bool = True,
        delete_input_file: bool = False,
        max_lines_per_batch: int | None = None,
        max_active_batches: int = DEFAULT_MAX_ACTIVE_BATCHES,
        resubmit_failed: int = 0,
        max_input_tokens: int | None = None,
        strict_cost: bool = False,
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
        if max_lines_per_batch is not None:
            from airflow_provider_qwenbatch.client.jsonl import MAX_LINES
        check_counts(
            self.task_id,
            max_lines_per_batch=(
                max_lines_per_batch,
                1,
                MAX_LINES if max_lines_per_batch is not None else None,
            ),
            max_active_batches=(max_active_batches, 1, MAX_UNFINISHED_BATCHES),
            resubmit_failed=(resubmit_failed, 0, None),
            max_input_tokens=(max_input_tokens, 1, None),
        )
        if resubmit_failed and not wait_for_completion:
            raise ValueError(
                f"{self.task_id}: resubmit_failed needs wait_for_completion=True: the failed requests are "
                "only known once the batches have ended"
            )
        if input_file_id is not None and (max_lines_per_batch or resubmit_failed or max_input_tokens):
            raise ValueError(
                f"{self.task_id}: max_lines_per_batch, resubmit_failed and max_input_tokens need the input "
                "itself (requests or input_path); an input_file_id is not read"
            )
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
        self.timeout = seconds(timeout)
        self.cancel_on_kill = cancel_on_kill
        self.reattach = reattach
        self.delete_input_file = delete_input_file
        self.max_lines_per_batch = max_lines_per_batch
        self.max_active_batches = max_active_batches
        self.resubmit_failed = resubmit_failed
        self.max_input_tokens = max_input_tokens
        self.strict_cost = strict_cost
        self.batch_id: str | None = None
        self._job_batch_ids: list[str] = []
        self._started = time.monotonic()
        self._done: Batch | None = None
        self._killed = False
        if "{{" not in completion_window:
            self._check_window()
        if "{{" not in endpoint:
            # Refused when the DAG is parsed, like completion_window: a typo must not reach a run.
            try:
                check_endpoint(endpoint)
            except ValueError as exc:
                raise BatchInputError(f"{self.task_id}: {exc}") from None
        if delete_input_file and not wait_for_completion:
            raise ValueError(
                f"{self.task_id}: delete_input_file=True needs wait_for_completion=True: the input file can "
                "only be deleted once the batch has ended, and with wait_for_completion=False nothing waits "
                "for that (delete it later with the client's delete_file, or wait in this task)"
            )
        from airflow.sdk import XComArg

        # Airflow links XComArgs of template fields only; requests is not one (see template_fields).
        # An operator unmapped from a MappedOperator at run time has its links already.
        if isinstance(requests, XComArg) and not getattr(self, "_BaseOperator__from_mapped", False):
            XComArg.apply_upstream_relationship(self, requests)

    # ---- checks before anything is uploaded -----------------------------------------------

    def _check_window(self) -> None:
        try:
            parse_completion_window(self.completion_window)
        except ValueError as exc:
            raise BatchInputError(f"{self.task_id}: {exc}") from None

    def _create_request(
        self,
        tag: BatchTag,
        input_file_id: str,
        fingerprint: InputFingerprint | None = None,
        *,
        shard: ShardLabel | None = None,
    ) -> BatchCreateRequest:
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
        metadata["ds_name"] = tag.ds_name(user_name, fingerprint=fingerprint, shard=shard)
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

    def _input_requests(self, context: Context) -> Iterable[Mapping[str, Any]] | None:
        """The request dicts to submit (``None`` when the input is a path or file id).

        Subclasses (the ``@task.qwen_batch`` decorator) give theirs here. It is called again when
        a deferred sharded job resumes and must give the same requests.

        :param context: the task context.
        """
        from airflow.sdk import XComArg

        requests: Any = self.requests
        if isinstance(requests, XComArg):
            requests = requests.resolve(context)
        if requests is not None and (
            isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Iterable)
        ):
            raise BatchInputError(
                f"{self.task_id}: requests must be request dicts (a list, a generator, or the XComArg of "
                f"a task returning a list), got {type(requests).__name__}; requests is not templated"
            )
        return requests

    def _requests_source(self) -> str | None:
        """How errors name where the requests come from (``None``: the ``requests`` argument)."""
        return None

    def _plan_input(self, context: Context) -> ShardPlan | None:
        """Validate and split the input (``None`` for an ``input_file_id``), checked before any upload.

        :param context: the task context.
        """
        from airflow_provider_qwenbatch.operators._plan import plan_input

        return plan_input(
            self._input_requests(context),
            self.input_path,
            self.input_conn_id,
            self.endpoint,
            max_lines_per_batch=self.max_lines_per_batch,
            strict_cost=self.strict_cost,
            max_input_tokens=self.max_input_tokens,
            logger=self.log,
            requests_source=self._requests_source(),
        )

    def _fingerprint(self, prepared: PreparedInput | None) -> InputFingerprint:
        if prepared is not None:
            return prepared.fingerprint(self.completion_window)
        assert self.input_file_id is not None
        return InputFingerprint.of_file_id(
            self.input_file_id, endpoint=self.endpoint, completion_window=self.completion_window
        )

    # ---- execute --------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate, upload, create (or re-attach), then wait as configured."""
        from airflow_provider_qwenbatch.client.cancel import DEFAULT_KILL_BUDGET, cancel_quietly
        from airflow_provider_qwenbatch.inputs import PreparedInput
        from airflow_provider_qwenbatch.operators._sharded import ShardedJob
        from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

        started = self._started = time.monotonic()
        ti = context["ti"]
        tag = tag_of(ti)
        self._check_window()
        # Metadata and endpoint checked with a placeholder id: nothing is uploaded before they pass.
        self._create_request(tag, self.input_file_id or "file-placeholder")
        # Validated, split and hashed in one pass before any request: the fingerprints decide re-attach.
        plan = self._plan_input(context)
        if plan is not None and (len(plan.shards) > 1 or self.resubmit_failed > 0):
            try:
                with self._client() as client, as_airflow_errors():
                    return ShardedJob(self, context, client, tag).start(plan)
            finally:
                plan.cleanup()
        prepared = None
        if plan is not None:
            # One shard: one batch, the single-batch path (its file is the plan's, removed with it).
            prepared = PreparedInput(
                Path(plan.shards[0].path), plan.shards[0].summary, temporary=plan.owns_folder
            )
        client = self._client()
        with client, as_airflow_errors():
            try:
                fingerprint = self._fingerprint(prepared)
                batch = self._find_earlier(client, tag, ti.try_number, fingerprint)
                if batch is None:
                    batch = self._submit(client, tag, prepared, fingerprint)
            finally:
                if prepared is not None:
                    prepared.discard()
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

    def _console_url(self, batch_id: str) -> str:
        assert self._settings is not None
        return self._settings.console_url(batch_id)

    def _publish(self, context: Context, batch: Batch) -> None:
        # Pushed at once, so links and clean-up can find the batch even if the task dies next.
        ti = context["ti"]
        ti.xcom_push(key=BATCH_ID_XCOM_KEY, value=batch.id)
        ti.xcom_push(key=CONSOLE_URL_XCOM_KEY, value=self._console_url(batch.id))

    def _delete_input(self, client: BatchClient, batch: Batch) -> None:
        if not batch.input_file_id:
            return
        try:
            client.delete_file(batch.input_file_id)
            self.log.info("Deleted input file %s", batch.input_file_id)
        except Exception as exc:  # the batch's result matters more than the quota
            self.log.warning("Could not delete input file %s: %s", batch.input_file_id, exc)

    def _finish(self, client: BatchClient, batch: Batch) -> dict[str, Any]:
        if self.delete_input_file:
            self._delete_input(client, batch)
        self._done = batch
        if not batch.status.is_success:
            raise BatchFailedError(describe_end(batch), batch.id, batch.status.value)
        self.log.info(describe_end(batch))
        return batch_summary(batch, console_url=self._console_url(batch.id))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Lineage:
        """OpenLineage facets: the input (path or file) in, the batch's result files out.

        :param task_instance: the finished task instance (unused: the operator kept what it did).
        """
        from airflow_provider_qwenbatch.lineage import submit_lineage

        done = self._done
        return submit_lineage(
            base_url=self._settings.base_url if self._settings else "",
            batch_id=self.batch_id,
            input_path=self.input_path if isinstance(self.input_path, str) else None,
            input_file_id=done.input_file_id if done else self.input_file_id,
            result_file_ids=[done.output_file_id, done.error_file_id] if done else [],
        )

    def execute_sharded_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume a sharded job after its trigger: create more shards, defer again, or finish.

        :param context: the task context.
        :param event: the trigger's event.
        """
        from airflow_provider_qwenbatch.operators._sharded import JOB_STATE_XCOM_KEY, ShardedJob
        from airflow_provider_qwenbatch.triggers.batches import parse_batches_event

        payload = parse_batches_event(event)
        if payload.status == "timeout":
            raise BatchTimeoutError(f"{self.task_id}: {payload.message}")
        if payload.status == "error":
            raise QwenBatchAirflowError(f"{self.task_id}: {payload.message}")
        ti = context["ti"]
        # map_indexes: without it a mapped task's pull returns every map index's state.
        map_index = ti.map_index if ti.map_index is not None else -1
        job = ti.xcom_pull(task_ids=ti.task_id, key=JOB_STATE_XCOM_KEY, map_indexes=map_index)
        if not isinstance(job, dict):
            raise QwenBatchAirflowError(
                f"{self.task_id}: resumed without the job's state ({type(job).__name__})"
            )
        self._started = time.monotonic()
        with self._client() as client, as_airflow_errors():
            return ShardedJob(self, context, client, tag_of(context["ti"])).resume(job)

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
