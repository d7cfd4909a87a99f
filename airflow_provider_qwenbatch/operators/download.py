"""DownloadBatchResultsOperator: stream a batch's (or a sharded job's) result files to a destination and count them."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError, as_airflow_errors
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.job_results import (
    JobShapeError,
    apply_umask,
    check_failure_thresholds,
    parse_job,
)
from airflow_provider_qwenbatch.operators._base import QwenBatchBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context, XComArg

    from airflow_provider_qwenbatch.client.cost import PriceTable
    from airflow_provider_qwenbatch.client.logs import LoggerLike
    from airflow_provider_qwenbatch.client.models import Batch
    from airflow_provider_qwenbatch.client.results import ResultCounts
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.lineage import Lineage


class DownloadBatchResultsOperator(QwenBatchBaseOperator):
    """Stream a batch's (or a sharded job's) output and error files to a destination, and count results line by line.

    Every line's own status is checked: the output file can hold non-200 lines while
    ``request_counts.failed`` says 0. Files are written as ``<destination>/<batch_id>/output.jsonl``
    and ``.../errors.jsonl`` with the permissions the user's umask gives a new file. Returns paths,
    counts and token totals.

    With ``outlets``, each outlet asset's event carries ``extra`` = ``{"batch_ids", "lines",
    "succeeded", "failed", "tokens", "output_paths"}``, so a DAG scheduled on the asset knows
    what it got (``triggering_asset_events``). OpenLineage: the batch's result files in, the
    files at the destination out (:mod:`airflow_provider_qwenbatch.lineage`).

    With ``job`` (the submit task's return value, e.g. ``submit.output``) instead of
    ``batch_id``: every batch of the job (its shards and resubmission rounds) is merged into ONE
    ``<destination>/output.jsonl`` and ONE ``<destination>/errors.jsonl``, each ``custom_id``
    once with its last outcome; counts, thresholds, tokens and cost are over that final
    outcome, with per-shard figures (see :func:`~airflow_provider_qwenbatch.job_results.download_job_results`,
    which also says how much temporary disk it needs).

    :param batch_id: the batch (templated), e.g. ``{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}``.
    :param job: a sharded job: the submit task's return value, a dict or its XComArg (not
        templated: ids are used as given). Give exactly one of ``batch_id`` and ``job``.
    :param destination: a folder: local path or ObjectStoragePath URI (templated).
    :param conn_id: the ``qwen_batch`` Connection.
    :param destination_conn_id: Airflow Connection of the object store, if it needs one.
    :param max_failed_ratio: fail the task when failed lines / all lines exceeds this (0..1); files are kept.
    :param max_failed_lines: fail the task when more lines than this failed; files are kept.
    :param delete_remote_files: delete the result files on the server after a successful download
        (the account keeps at most 10,000 files, forever).
    :param results_by_custom_id: (``job`` only) write the results in the order of ``input_path``;
        refused without ``input_path``.
    :param input_path: (``job`` only) the input the submit task read, local or ObjectStoragePath
        URI (templated).
    :param input_conn_id: Airflow Connection of the object store holding ``input_path``.
    :param prices: (``job`` only) price table for the cost, JSON text or mapping (see
        :mod:`airflow_provider_qwenbatch.client.cost`); default ``[qwenbatch] prices``; no cost without either.
    """

    template_fields: Sequence[str] = ("batch_id", "destination", "input_path")

    def __init__(
        self,
        *,
        batch_id: str | None = None,
        job: Mapping[str, Any] | XComArg | None = None,
        destination: str,
        conn_id: str = QwenBatchHook.default_conn_name,
        destination_conn_id: str | None = None,
        max_failed_ratio: float | None = None,
        max_failed_lines: int | None = None,
        delete_remote_files: bool = False,
        results_by_custom_id: bool = False,
        input_path: str | None = None,
        input_conn_id: str | None = None,
        prices: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        if max_failed_ratio is not None and not 0 <= max_failed_ratio <= 1:
            raise ValueError(f"{self.task_id}: max_failed_ratio must be within 0..1, got {max_failed_ratio}")
        self._check_job_arguments(batch_id, job, results_by_custom_id, input_path, prices)
        self.batch_id = batch_id
        self.job = job
        self.results_by_custom_id = results_by_custom_id
        self.input_path = input_path
        self.input_conn_id = input_conn_id
        self.prices = prices
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.max_failed_ratio = max_failed_ratio
        self.max_failed_lines = max_failed_lines
        self.delete_remote_files = delete_remote_files
        self._lineage: dict[str, Any] | None = None
        from airflow.sdk import XComArg

        # job is not a template field (its strings must not go through Jinja): link its XComArg
        # here, as Airflow does for template fields. A task unmapped at run time has its links.
        if isinstance(job, XComArg) and not getattr(self, "_BaseOperator__from_mapped", False):
            XComArg.apply_upstream_relationship(self, job)

    def _check_job_arguments(
        self,
        batch_id: str | None,
        job: Any,
        results_by_custom_id: bool,
        input_path: str | None,
        prices: str | Mapping[str, Any] | None,
    ) -> None:
        """Refuse, when the DAG is parsed, arguments that cannot work together."""
        if (batch_id is None) == (job is None):
            raise ValueError(
                f"{self.task_id}: give exactly one of batch_id (one batch) and job (the submit task's "
                f"return value, e.g. job=submit.output); got {'both' if batch_id is not None else 'neither'}"
            )
        job_only = [n for n, v in (("results_by_custom_id", results_by_custom_id), ("prices", prices)) if v]
        if batch_id is not None and (job_only or input_path is not None):
            raise ValueError(
                f"{self.task_id}: {', '.join(job_only or ['input_path'])} apply to job=, not to batch_id= "
                "(pass the submit task's return value as job=)"
            )
        if results_by_custom_id and not input_path:
            raise ValueError(
                f"{self.task_id}: results_by_custom_id=True needs input_path (the same input the submit "
                "task read): the results are written in its order. Without it, results come in the "
                "order of the result files (leave results_by_custom_id False)"
            )
        from airflow.sdk import XComArg

        if job is not None and not isinstance(job, XComArg):
            try:
                parse_job(job, where=f"{self.task_id}: job")
            except JobShapeError as exc:
                raise ValueError(str(exc)) from None
        if prices is not None:
            from airflow_provider_qwenbatch.client.cost import PriceTable

            try:
                PriceTable.from_json(prices)
            except ValueError as exc:
                raise ValueError(f"{self.task_id}: prices: {exc}") from None

    def execute(self, context: Context) -> dict[str, Any]:
        """Download, count, check the thresholds, then optionally delete the remote files."""
        if self.job is not None:
            return self._execute_job(context)
        assert self.batch_id is not None  # one of batch_id and job, checked in __init__
        client = self._client()
        with client, as_airflow_errors():
            batch = client.retrieve_batch(self.batch_id)
            if not batch.status.is_terminal:
                raise QwenBatchAirflowError(
                    f"{self.task_id}: batch {batch.id} is still {batch.status.value}; wait for it first"
                )
            summary, totals = download_batch_results(
                client, batch, self.destination, destination_conn_id=self.destination_conn_id, logger=self.log
            )
            files = [batch.output_file_id, batch.error_file_id]
            self._lineage = {
                "batch_id": batch.id,
                "remote_file_ids": [f for f in files if f],
                "stored": [summary["output_path"], summary["error_path"]],
            }
            check_failure_thresholds(
                f"{self.task_id}: batch {batch.id}",
                totals.lines,
                totals.failed,
                totals.failed_examples,
                max_failed_lines=self.max_failed_lines,
                max_failed_ratio=self.max_failed_ratio,
            )
            self._emit_asset_extra(context, summary)
            if self.delete_remote_files:
                summary["deleted_files"] = self._delete(client, [f for f in files if f])
            return summary

    def _execute_job(self, context: Context) -> dict[str, Any]:
        """Merge every batch of a sharded job into one output and one error file."""
        from airflow.sdk import XComArg

        from airflow_provider_qwenbatch.compat import AirflowFailException
        from airflow_provider_qwenbatch.job_results import download_job_results

        job: Any = self.job
        if isinstance(job, XComArg):
            job = job.resolve(context)
        try:
            parse_job(job, where=f"{self.task_id}: job")
        except JobShapeError as exc:
            # Not retried: the upstream task's return value will not change.
            raise AirflowFailException(str(exc)) from None
        prices: str | Mapping[str, Any] | PriceTable | None = self.prices
        client = self._client()
        with client, as_airflow_errors():
            summary = download_job_results(
                client,
                job,
                self.destination,
                destination_conn_id=self.destination_conn_id,
                input_path=self.input_path,
                input_conn_id=self.input_conn_id,
                results_by_custom_id=self.results_by_custom_id,
                prices=prices,
                logger=self.log,
            )
            remote = [f for b in summary["batches"] for f in (b["output_file_id"], b["error_file_id"]) if f]
            self._lineage = {
                "batch_id": summary["batch_ids"][0],
                "remote_file_ids": remote,
                "stored": [summary["output_path"], summary["error_path"]],
            }
            # Requests without any result line were not answered: they count as failed here.
            check_failure_thresholds(
                f"{self.task_id}: job of {len(summary['batch_ids'])} batches",
                summary["lines"] + summary["missing"],
                summary["failed"] + summary["missing"],
                summary["failed_examples"],
                max_failed_lines=self.max_failed_lines,
                max_failed_ratio=self.max_failed_ratio,
            )
            self._emit_asset_extra(context, summary)
            if self.delete_remote_files:
                summary["deleted_files"] = self._delete(client, remote)
            return summary

    def _emit_asset_extra(self, context: Context, summary: dict[str, Any]) -> None:
        """Attach what was downloaded to each outlet's asset event (Airflow 3 ``outlet_events``)."""
        if not self.outlets:
            return
        extra = {
            "batch_ids": summary.get("batch_ids") or [summary["batch_id"]],
            "status": summary["status"],
            "lines": summary["lines"],
            "succeeded": summary["succeeded"],
            "failed": summary["failed"],
            "tokens": summary["tokens"],
            "output_paths": [p for p in (summary["output_path"], summary["error_path"]) if p],
        }
        events = context["outlet_events"]
        for outlet in self.outlets:
            if _is_asset(outlet):
                events[outlet].extra.update(extra)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Lineage:
        """OpenLineage facets: the batch's result files in, the stored files out.

        :param task_instance: the finished task instance (unused: the operator kept what it did).
        """
        from airflow_provider_qwenbatch.lineage import download_lineage

        if self._lineage is None or self._settings is None:
            from airflow.providers.openlineage.extractors import OperatorLineage

            return OperatorLineage()
        return download_lineage(base_url=self._settings.base_url, **self._lineage)

    def _delete(self, client: BatchClient, file_ids: list[str]) -> list[str]:
        deleted = []
        for file_id in file_ids:
            try:
                client.delete_file(file_id)
                deleted.append(file_id)
            except Exception as exc:  # results are safe locally; a leftover file only costs quota
                self.log.warning("Could not delete remote file %s: %s", file_id, exc)
        return deleted


def download_batch_results(
    client: BatchClient,
    batch: Batch,
    destination: str,
    *,
    destination_conn_id: str | None = None,
    logger: LoggerLike | None = None,
) -> tuple[dict[str, Any], ResultCounts]:
    """Stream one terminal batch's result files to ``<destination>/<batch_id>/`` and count them line by line.

    What :class:`DownloadBatchResultsOperator` (``batch_id=``) and ``@task.qwen_batch(destination=...)``
    do with a single batch: ``output.jsonl`` and ``errors.jsonl`` (when the batch has them) go
    through a private temporary file to the destination, with the mode the user's umask gives a
    new file.

    :param client: the client of the batch's Connection.
    :param batch: the batch, already terminal (its result file ids are read from it).
    :param destination: a folder: local path or ObjectStoragePath URI.
    :param destination_conn_id: Airflow Connection of the object store, if it needs one.
    :param logger: where to log the counts (this module's logger by default).
    :return: the summary (ids, paths, counts, tokens, first failures; ``deleted_files`` empty) and
        the counts.
    """
    from airflow_provider_qwenbatch.client.results import ResultCounts, count_results
    from airflow_provider_qwenbatch.inputs import store_file

    log = logger or logging.getLogger(__name__)
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
            # The temporary file is private (0600); the stored result follows the umask.
            apply_umask(local)
            counts = count_results(local)
            log.info(
                "%s: %d lines, %d succeeded, %d failed", name, counts.lines, counts.succeeded, counts.failed
            )
            totals.add(counts)
            paths[key] = store_file(local, f"{destination.rstrip('/')}/{batch.id}", destination_conn_id)
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
    log.info(
        "Batch %s results: %d lines, %d succeeded, %d failed, %d tokens",
        batch.id,
        totals.lines,
        totals.succeeded,
        totals.failed,
        totals.total_tokens,
    )
    return summary, totals


def _is_asset(outlet: Any) -> bool:
    from airflow.sdk import Asset

    return isinstance(outlet, Asset)
