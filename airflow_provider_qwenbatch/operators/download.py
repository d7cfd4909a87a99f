"""DownloadBatchResultsOperator: stream a batch's result files to a destination and count them."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError, as_airflow_errors
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.operators._base import QwenBatchBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.logs import LoggerLike
    from airflow_provider_qwenbatch.client.models import Batch
    from airflow_provider_qwenbatch.client.results import ResultCounts
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.lineage import Lineage


class DownloadBatchResultsOperator(QwenBatchBaseOperator):
    """Stream a batch's output and error files to a destination, and count results line by line.

    Every line's own status is checked: the output file can hold non-200 lines while
    ``request_counts.failed`` says 0. Files are written as ``<destination>/<batch_id>/output.jsonl``
    and ``.../errors.jsonl`` with the permissions the user's umask gives a new file. Returns paths,
    counts and token totals.

    With ``outlets``, each outlet asset's event carries ``extra`` = ``{"batch_ids", "lines",
    "succeeded", "failed", "tokens", "output_paths"}``, so a DAG scheduled on the asset knows
    what it got (``triggering_asset_events``). OpenLineage: the batch's result files in, the
    files at the destination out (:mod:`airflow_provider_qwenbatch.lineage`).

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
        self._lineage: dict[str, Any] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Download, count, check the thresholds, then optionally delete the remote files."""
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
            self._check_thresholds(batch.id, totals)
            self._emit_asset_extra(context, summary)
            if self.delete_remote_files:
                summary["deleted_files"] = self._delete(client, [f for f in files if f])
            return summary

    def _emit_asset_extra(self, context: Context, summary: dict[str, Any]) -> None:
        """Attach what was downloaded to each outlet's asset event (Airflow 3 ``outlet_events``)."""
        if not self.outlets:
            return
        extra = {
            "batch_ids": [summary["batch_id"]],
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


def download_batch_results(
    client: BatchClient,
    batch: Batch,
    destination: str,
    *,
    destination_conn_id: str | None = None,
    logger: LoggerLike | None = None,
) -> tuple[dict[str, Any], ResultCounts]:
    """Stream a terminal batch's result files to ``<destination>/<batch_id>/`` and count them line by line.

    What :class:`DownloadBatchResultsOperator` and ``@task.qwen_batch(destination=...)`` do with
    one batch: ``output.jsonl`` and ``errors.jsonl`` (when the batch has them) go through a
    private temporary file to the destination, with the mode the user's umask gives a new file.

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
            _apply_umask(local)
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


def _current_umask() -> int:
    # Linux reports it without changing it; elsewhere os.umask can only read by setting.
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets: ``0o666`` less the process umask."""
    path.chmod(0o666 & ~_current_umask())


def _is_asset(outlet: Any) -> bool:
    from airflow.sdk import Asset

    return isinstance(outlet, Asset)
