"""The small JSON summary of a batch that goes to XCom and trigger events (never payloads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.cancel import CancelOutcome
    from airflow_provider_qwenbatch.client.logs import LoggerLike
    from airflow_provider_qwenbatch.client.models import Batch, RequestCounts


def batch_summary(batch: Batch, **extra: Any) -> dict[str, Any]:
    """Summarise a batch as plain JSON for XCom: ids, status, counts, file ids, timestamps.

    :param batch: the batch.
    :param extra: more small JSON values to include (e.g. ``console_url``).
    """
    counts = batch.counts
    summary: dict[str, Any] = {
        "batch_id": batch.id,
        "status": batch.status.value,
        "endpoint": batch.endpoint,
        "input_file_id": batch.input_file_id,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "request_counts": {"total": counts.total, "completed": counts.completed, "failed": counts.failed},
        "created_at": batch.created_at,
        "completed_at": batch.completed_at,
        "errors": [e.model_dump(mode="json", exclude_none=True) for e in batch.error_list],
    }
    summary.update(extra)
    return summary


def describe_end(batch: Batch) -> str:
    """A one-line explanation of how a batch ended, for logs and exceptions.

    :param batch: a terminal batch.
    """
    counts = batch.counts
    text = (
        f"Batch {batch.id} ended {batch.status.value}: {counts.completed} completed, {counts.failed} failed "
        f"of {counts.total}"
    )
    if batch.error_list:
        text += f"; errors: {batch.describe_errors()}"
    if batch.error_file_id:
        text += f"; error file {batch.error_file_id}"
    if batch.x_request_id:
        text += f" (x-request-id={batch.x_request_id})"
    return text


class ProgressReporter:
    """Logs ``Batch <id> <status>: done/total (pct%)`` whenever the status or counts change.

    :param logger: the task or trigger log.
    """

    def __init__(self, logger: LoggerLike) -> None:
        self.logger = logger
        self._last: tuple[str, RequestCounts] | None = None

    def update(self, batch: Batch) -> bool:
        """Log the batch's progress if it changed since the last call; return whether it did.

        :param batch: the batch as just read.
        """
        key = (batch.status.value, batch.counts)
        if key == self._last:
            return False
        self._last = key
        self.logger.info("Batch %s %s: %s", batch.id, batch.status.value, batch.counts.progress())
        return True


def describe_timeout(batch: Batch, timeout: float | None, outcome: CancelOutcome) -> str:
    """The one message of a batch cancelled at its timeout, in the worker and in the triggerer alike.

    :param batch: the batch as last read.
    :param timeout: the operator's ``timeout`` in seconds (``None`` if unknown).
    :param outcome: what the cancel did.
    """
    after = f"after the timeout of {timeout:.0f}s" if timeout is not None else "at its deadline"
    return (
        f"batch {batch.id} still {batch.status.value} {after}; cancel: {outcome.action.value} "
        f"(x-request-id={outcome.request_id or 'none'})"
    )


def describe_job_progress(batches: list[Batch], shards: int, total_lines: int | None = None) -> str:
    """One progress line for the batches of a sharded job: shards done, lines done / total (pct), failed.

    :param batches: the job's batches as last read (those not created yet are simply absent).
    :param shards: how many batches the job has in all (created or not).
    :param total_lines: the input's requests (default: the sum of the batches' own totals).
    """
    done = sum(1 for b in batches if b.status.is_terminal)
    return f"{done}/{shards} shard batches done; {describe_lines(batches, total_lines)}"


def describe_lines(batches: list[Batch], total_lines: int | None = None) -> str:
    """``lines done/total (pct%), failed F`` over many batches (a job's, in the worker or the trigger).

    :param batches: the batches as last read.
    :param total_lines: the lines in all (default: the sum of the batches' own totals).
    """
    lines_done = sum(b.counts.done for b in batches)
    failed = sum(b.counts.failed for b in batches)
    total = total_lines if total_lines is not None else sum(b.counts.total for b in batches)
    pct = (100.0 * lines_done / total) if total else 0.0
    return f"lines {lines_done}/{total} ({pct:.1f}%), failed {failed}"


def job_summary(
    entries: list[tuple[dict[str, Any], Batch]],
    *,
    rounds: int,
    input_info: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Summarise a sharded job (many batches of one task) as plain JSON for XCom.

    The shape is what ``DownloadBatchResultsOperator(job=...)`` reads: ``kind`` ``sharded``,
    ``status`` (``running`` while a batch is unfinished, as with ``wait_for_completion=False``;
    ``completed`` when no batch ended ``failed`` and every batch of the last round completed;
    else ``failed``), ``batch_ids``, ``shards`` (one entry per batch: ``shard``, ``round``, ``lines``,
    ``first_line``, ``last_line`` and the batch's own :func:`batch_summary`), ``rounds``,
    ``request_counts`` (round 0's, summed) and ``input``.

    :param entries: (shard facts, batch) per batch, round 0 first, then each resubmission round.
    :param rounds: 1 + resubmission rounds run.
    :param input_info: ``lines``, ``bytes``, ``model``, ``endpoint`` of the input.
    :param extra: more small JSON values (``console_url``).
    """
    last_round = max((facts["round"] for facts, _ in entries), default=0)
    ok = all(b.status.value != "failed" for _, b in entries) and all(
        b.status.is_success for facts, b in entries if facts["round"] == last_round
    )
    first = [b for facts, b in entries if facts["round"] == 0]
    running = any(not b.status.is_terminal for _, b in entries)
    summary: dict[str, Any] = {
        "kind": "sharded",
        "status": "running" if running else "completed" if ok else "failed",
        "batch_ids": [b.id for _, b in entries],
        "shards": [{**facts, **batch_summary(b)} for facts, b in entries],
        "rounds": rounds,
        "request_counts": {
            "total": sum(b.counts.total for b in first),
            "completed": sum(b.counts.completed for b in first),
            "failed": sum(b.counts.failed for b in first),
        },
        "input": input_info,
    }
    summary.update(extra)
    return summary
