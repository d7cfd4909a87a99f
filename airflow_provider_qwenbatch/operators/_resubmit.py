"""A sharded job's next round: the requests whose last outcome failed for a retryable reason, as shards.

The rule of what is worth sending again is :func:`~airflow_provider_qwenbatch.client.results.is_retryable`
(server errors, timeouts, requests an expired or cancelled batch never ran; never content or
validation errors); :func:`~airflow_provider_qwenbatch.client.merge.write_resubmission` applies
it over every round's result files, and the lines go out exactly as first sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.logs import LoggerLike
    from airflow_provider_qwenbatch.client.models import Batch
    from airflow_provider_qwenbatch.client.shards import ShardPlan
    from airflow_provider_qwenbatch.client.sync import BatchClient


def _download(
    client: BatchClient, file_id: str | None, folder: Path, downloads: dict[str, str]
) -> str | None:
    if not file_id:
        return None
    if file_id not in downloads:
        local = folder / f"{file_id}.jsonl"
        client.download_file(file_id, local)
        downloads[file_id] = str(local)
    return downloads[file_id]


def resubmission_plan(
    client: BatchClient,
    rounds: list[list[Batch]],
    first: ShardPlan,
    folder: Path,
    endpoint: str,
    *,
    max_lines_per_batch: int | None,
    downloads: dict[str, str],
    logger: LoggerLike,
) -> ShardPlan:
    """Download every round's results, pick the requests to send again, and split them into shards.

    :param client: a sync client.
    :param rounds: each round's batches so far, in shard order (round 0: the input's shards).
    :param first: the input's own shards (round 0), whose lines are re-sent unchanged.
    :param folder: a private working folder (results, the follow-up input and its shards).
    :param endpoint: the batch endpoint.
    :param max_lines_per_batch: the user's cap on lines per shard.
    :param downloads: file id -> local copy, shared across rounds (each file is downloaded once).
    :param logger: the task log.
    :returns: the next round's shards (none when nothing is worth sending again).
    """
    from airflow_provider_qwenbatch.client.merge import ResultFiles, write_resubmission
    from airflow_provider_qwenbatch.client.shards import split_jsonl_file

    round_number = len(rounds)
    results = [
        ResultFiles(
            n if r == 0 else None,
            _download(client, batch.output_file_id, folder, downloads),
            _download(client, batch.error_file_id, folder, downloads),
            attempt=r + 1,
        )
        for r, batches in enumerate(rounds)
        for n, batch in enumerate(batches, start=1)
    ]
    # A shard whose batch failed validation as a whole would fail again: its lines are not re-sent.
    inputs = [s.path for s in first.shards if rounds[0][s.number - 1].status.value != "failed"]
    resub = write_resubmission(results, inputs, folder / f"resubmit-{round_number}.jsonl")
    logger.info(
        "Round %d: %d requests to send again (%d failed for a retryable reason, %d have no result)",
        round_number,
        resub.lines,
        resub.retryable,
        resub.missing,
    )
    if resub.lines == 0:
        from airflow_provider_qwenbatch.client.shards import ShardPlan

        return ShardPlan(f"resubmission round {round_number}", endpoint, first.model, str(folder))
    return split_jsonl_file(
        resub.path,
        endpoint,
        folder=folder / f"round-{round_number}",
        max_lines_per_batch=max_lines_per_batch,
        source=f"resubmission round {round_number}",
    )
