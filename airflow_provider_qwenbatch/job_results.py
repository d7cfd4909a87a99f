"""The results of a sharded job: every shard's files downloaded and merged into one output and one error file.

A job is the submit task's return value (``summary.job_summary``): its ``shards`` list names
every batch with its shard number and round (0: the first batches of the input; r >= 1: the
r-th resubmission of retryable failures). :func:`download_job_results` downloads each batch's
output and error file, one batch at a time, into a temporary folder, then merges them with
:func:`~.client.merge.merge_results` (attempt = round + 1, so each ``custom_id`` keeps its
LAST outcome) into ``<destination>/output.jsonl`` and ``<destination>/errors.jsonl``.

Memory does not grow with the size of the job; disk does. The temporary folder holds, at the
peak, every result file of the job, plus the two merged files (about the same size again),
plus, when resubmissions exist or input order is asked, an SQLite index (about 70 bytes per
result line) and, for a remote ``input_path``, a copy of the input. A local destination then
receives the merged files by a move (no third copy on the same file system).

A single-batch summary (``batch_id``, no ``kind``: the submit task's return value when the input
fitted one batch) is read as a job of one shard, so ``job=submit.output`` works at any size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.client.cost import PriceTable
from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.logs import LoggerLike
    from airflow_provider_qwenbatch.client.merge import MergeSummary
    from airflow_provider_qwenbatch.client.results import ResultCounts
    from airflow_provider_qwenbatch.client.sync import BatchClient

SHARDED_KIND = "sharded"
_COPY_CHUNK = 1024 * 1024
_MODEL_LINES = 100  # lines of an output file read to find the model's name (never the whole file)


class JobShapeError(ValueError):
    """The ``job`` given is not a submit task's summary; the message names the field that is wrong."""


@dataclass(frozen=True)
class JobBatch:
    """One batch of a job.

    :param batch_id: the batch.
    :param shard: its shard number within its round (1-based).
    :param round: 0 for the input's own shards, r for the r-th resubmission.
    """

    batch_id: str
    shard: int
    round: int


@dataclass(frozen=True)
class JobShape:
    """What the download needs from a job summary.

    :param batches: every batch, round 0 first, then each resubmission round in order.
    :param status: the job's status as the submit task saw it (``None`` if not given).
    :param model: the input's model, for the cost (``None`` if not given).
    :param input_lines: requests in the input (``None`` if not given).
    """

    batches: list[JobBatch]
    status: str | None
    model: str | None
    input_lines: int | None


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise JobShapeError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _batch_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise JobShapeError(f"{where} must be a batch id (a non-empty string), got {value!r}")
    return value


def parse_job(job: Any, *, where: str = "job") -> JobShape:
    """Read a job summary (or a single-batch summary), checking every field the download uses.

    :param job: the submit task's return value.
    :param where: how the error messages name it (e.g. ``download: job``).
    :raises JobShapeError: naming the field that is missing or wrong.
    """
    if not isinstance(job, Mapping):
        hint = (
            "; job is not templated: pass the submit task's XComArg (e.g. submit.output) instead"
            if isinstance(job, str)
            else ""
        )
        raise JobShapeError(
            f"{where} must be the submit task's return value (a dict), got {type(job).__name__}{hint}"
        )
    kind = job.get("kind")
    if kind is None:
        if "batch_id" not in job:
            raise JobShapeError(f"{where} has neither 'kind' (a sharded job) nor 'batch_id' (one batch)")
        batch = JobBatch(_batch_id(job["batch_id"], f"{where}.batch_id"), 1, 0)
        status = job.get("status")
        return JobShape([batch], status if isinstance(status, str) else None, None, None)
    if kind != SHARDED_KIND:
        raise JobShapeError(f"{where}.kind must be {SHARDED_KIND!r}, got {kind!r}")
    ids = job.get("batch_ids")
    shards = job.get("shards")
    if not isinstance(ids, list) or not ids:
        raise JobShapeError(f"{where}.batch_ids must be a non-empty list of batch ids, got {ids!r}")
    if not isinstance(shards, list) or len(shards) != len(ids):
        got = f"{len(shards)} entries" if isinstance(shards, list) else repr(shards)
        raise JobShapeError(
            f"{where}.shards must be a list of one entry per batch id ({len(ids)}), got {got}"
        )
    batches: list[JobBatch] = []
    seen: dict[str, int] = {}
    slots: dict[tuple[int, int], str] = {}
    for i, (bid, entry) in enumerate(zip(ids, shards, strict=True)):
        here = f"{where}.shards[{i}]"
        bid = _batch_id(bid, f"{where}.batch_ids[{i}]")
        if not isinstance(entry, Mapping):
            raise JobShapeError(f"{here} must be an object, got {type(entry).__name__}")
        if entry.get("batch_id", bid) != bid:
            raise JobShapeError(
                f"{here}.batch_id is {entry['batch_id']!r} but {where}.batch_ids[{i}] is {bid!r}"
            )
        if bid in seen:
            raise JobShapeError(f"{where}.batch_ids[{i}] repeats {bid!r} (also at [{seen[bid]}])")
        seen[bid] = i
        shard = _int(entry.get("shard"), f"{here}.shard", 1)
        rnd = _int(entry.get("round"), f"{here}.round", 0)
        if (rnd, shard) in slots:
            raise JobShapeError(
                f"{here} is shard {shard} of round {rnd} again (also batch {slots[(rnd, shard)]!r})"
            )
        slots[(rnd, shard)] = bid
        batches.append(JobBatch(bid, shard, rnd))
    # The last outcome of a custom_id wins, so the rounds must be merged in order (a stable
    # sort keeps the shards' own order within a round).
    batches.sort(key=lambda b: b.round)
    info = job.get("input")
    model: str | None = None
    lines: int | None = None
    if isinstance(info, Mapping):
        if isinstance(info.get("model"), str):
            model = info["model"]
        if info.get("lines") is not None:
            lines = _int(info["lines"], f"{where}.input.lines", 0)
    status = job.get("status")
    return JobShape(batches, status if isinstance(status, str) else None, model, lines)


def resolve_prices(prices: str | Mapping[str, Any] | PriceTable | None) -> PriceTable | None:
    """The price table: the one given (JSON text, mapping or table), else ``[qwenbatch] prices``, else none.

    :param prices: the operator's argument.
    :raises ValueError: naming the model and key that is wrong.
    """
    if isinstance(prices, PriceTable):
        return prices
    if prices is not None:
        return PriceTable.from_json(prices)
    from airflow_provider_qwenbatch.prices import configured_price_table

    return configured_price_table()


def check_failure_thresholds(
    subject: str,
    lines: int,
    failed: int,
    examples: list[dict[str, str]],
    *,
    max_failed_lines: int | None,
    max_failed_ratio: float | None,
) -> None:
    """Fail when too many requests failed: the one threshold rule of every download.

    :param subject: what is named in the error, e.g. ``dl: batch batch_1``.
    :param lines: requests counted.
    :param failed: of those, failed ones.
    :param examples: the first failures (``custom_id``, ``error``).
    :param max_failed_lines: fail when more than this failed.
    :param max_failed_ratio: fail when failed / lines exceeds this.
    :raises QwenBatchAirflowError: over a threshold (the files are kept).
    """
    ratio = failed / lines if lines else 0.0
    too_many = max_failed_lines is not None and failed > max_failed_lines
    too_high = max_failed_ratio is not None and ratio > max_failed_ratio
    if too_many or too_high:
        shown = "; ".join(f"{e['custom_id']}: {e['error']}" for e in examples)
        raise QwenBatchAirflowError(
            f"{subject} has {failed} failed lines of {lines} ({ratio:.1%}), over the threshold "
            f"(max_failed_lines={max_failed_lines}, max_failed_ratio={max_failed_ratio}); files were kept. "
            f"First failures: {shown}"
        )


def apply_umask(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets (``0o666`` less the umask); temp files are 0600.

    :param path: the file.
    """
    path.chmod(0o666 & ~_current_umask())


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


def _local_input(input_path: str, conn_id: str | None, folder: Path) -> str:
    """The input as a local file: the path itself, or a copy of an ObjectStoragePath in ``folder``."""
    from urllib.parse import urlparse

    from airflow_provider_qwenbatch.inputs import is_remote

    if not is_remote(input_path):
        local = Path(
            urlparse(input_path).path if input_path.startswith("file://") else input_path
        ).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"input_path {input_path!r}: no such file")
        return os.fspath(local)
    from airflow.sdk import ObjectStoragePath

    remote = ObjectStoragePath(input_path, conn_id=conn_id) if conn_id else ObjectStoragePath(input_path)
    local = folder / "input.jsonl"
    with remote.open("rb") as src, local.open("wb") as dst:  # type: ignore[no-untyped-call]
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
    return os.fspath(local)


def _model_of_output(path: str | None) -> str | None:
    """The model named by the first answer of an output file (a single-batch summary names none)."""
    import json

    if path is None:
        return None
    with open(path, "rb") as fh:
        for _, raw in zip(range(_MODEL_LINES), fh, strict=False):
            try:
                body = json.loads(raw).get("response", {}).get("body", {})
            except (ValueError, AttributeError):
                continue
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                return str(body["model"])
    return None


def _tokens(counts: ResultCounts) -> dict[str, int]:
    return {
        "prompt": counts.prompt_tokens,
        "completion": counts.completion_tokens,
        "total": counts.total_tokens,
    }


def _cost(table: PriceTable | None, model: str | None, counts: ResultCounts) -> float | None:
    if table is None or model is None or model not in table.prices:
        return None
    return table.cost(model, counts.prompt_tokens, counts.completion_tokens).amount


def download_job_results(
    client: BatchClient,
    job: Mapping[str, Any],
    destination: str,
    *,
    destination_conn_id: str | None = None,
    input_path: str | None = None,
    input_conn_id: str | None = None,
    results_by_custom_id: bool = False,
    prices: str | Mapping[str, Any] | PriceTable | None = None,
    logger: LoggerLike | None = None,
) -> dict[str, Any]:
    """Download every batch of a job and merge them into ``<destination>/output.jsonl`` and ``errors.jsonl``.

    Counts are over the final outcome of each ``custom_id`` (a resubmission's outcome replaces
    the first one). Requests of the input without any result line (``input.lines`` of the job
    minus the result lines) are reported as ``missing`` and counted as failed by the thresholds.

    :param client: a client of the account that ran the job.
    :param job: the submit task's return value (see :func:`parse_job`).
    :param destination: a folder: local path or ObjectStoragePath URI.
    :param destination_conn_id: Airflow Connection of the object store, if it needs one.
    :param input_path: the input the submit task read (local or ObjectStoragePath); needed by
        ``results_by_custom_id``.
    :param input_conn_id: Airflow Connection of the object store holding ``input_path``.
    :param results_by_custom_id: write the results in the order of ``input_path`` (results
        whose ``custom_id`` is not in it come last).
    :param prices: price table (JSON text, mapping or :class:`PriceTable`); default ``[qwenbatch] prices``.
    :param logger: progress: each batch downloaded, the merge.
    :return: plain JSON: paths, total and per-shard counts, tokens, cost, every batch.
    :raises JobShapeError: ``job`` is not a job summary.
    :raises ValueError: ``results_by_custom_id`` without ``input_path``, or a bad price table.
    :raises QwenBatchAirflowError: a batch of the job is not finished yet.
    """
    from airflow_provider_qwenbatch.client.merge import ResultFiles, merge_results
    from airflow_provider_qwenbatch.inputs import store_file

    shape = parse_job(job)
    if results_by_custom_id and not input_path:
        raise ValueError("results_by_custom_id=True needs input_path (the input the submit task read)")
    table = resolve_prices(prices)  # a bad table fails before anything is downloaded
    total_batches = len(shape.batches)
    batches_out: list[dict[str, Any]] = []
    results: list[ResultFiles] = []
    with tempfile.TemporaryDirectory(prefix="qwenbatch-job-") as tmp:
        folder = Path(tmp)
        for k, jb in enumerate(shape.batches, start=1):
            batch = client.retrieve_batch(jb.batch_id)
            if not batch.status.is_terminal:
                raise QwenBatchAirflowError(
                    f"batch {batch.id} (shard {jb.shard}, round {jb.round}) is still {batch.status.value}; "
                    "wait for the job first",
                    batch.x_request_id,
                )
            paths: dict[str, str | None] = {"output": None, "error": None}
            size = 0
            for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
                if file_id:
                    local = folder / f"r{jb.round}-s{jb.shard}-{kind}.jsonl"
                    size += client.download_file(file_id, local)
                    paths[kind] = os.fspath(local)
            counts = batch.counts
            if logger is not None:
                logger.info(
                    "shard %d/%d downloaded: batch %s (shard %d, round %d) %s, %d lines (%d completed, "
                    "%d failed per the server), %d bytes",
                    k,
                    total_batches,
                    batch.id,
                    jb.shard,
                    jb.round,
                    batch.status.value,
                    counts.total,
                    counts.completed,
                    counts.failed,
                    size,
                )
            results.append(
                ResultFiles(
                    shard=jb.shard if jb.round == 0 else None,
                    output_path=paths["output"],
                    error_path=paths["error"],
                    attempt=jb.round + 1,
                )
            )
            batches_out.append(
                {
                    "batch_id": batch.id,
                    "shard": jb.shard,
                    "round": jb.round,
                    "status": batch.status.value,
                    "output_file_id": batch.output_file_id,
                    "error_file_id": batch.error_file_id,
                    "request_counts": {
                        "total": counts.total,
                        "completed": counts.completed,
                        "failed": counts.failed,
                    },
                }
            )
        model = shape.model or next((m for r in results if (m := _model_of_output(r.output_path))), None)
        inputs = (
            [_local_input(input_path, input_conn_id, folder)] if results_by_custom_id and input_path else []
        )
        merged = folder / "merged"
        summary = merge_results(
            results,
            merged / "output.jsonl",
            merged / "errors.jsonl",
            order="input" if results_by_custom_id else "results",
            inputs=inputs,
            work_dir=folder,
            logger=logger,
        )
        stored: list[str] = []
        for name in ("output.jsonl", "errors.jsonl"):
            apply_umask(merged / name)
            stored.append(store_file(merged / name, destination.rstrip("/"), destination_conn_id))
    return _job_summary(shape, summary, batches_out, stored, table, model, results_by_custom_id, logger)


def _per_shard(shape: JobShape, merged: MergeSummary) -> dict[int, ResultCounts]:
    """Counts of every shard of round 0 (a shard without any result line too); 0: lines of no known shard."""
    from airflow_provider_qwenbatch.client.results import ResultCounts

    per = {b.shard: ResultCounts() for b in shape.batches if b.round == 0}
    for shard, counts in merged.per_shard.items():
        if shard or counts.lines:
            per[shard] = counts
    return per


def _job_summary(
    shape: JobShape,
    merged: MergeSummary,
    batches: list[dict[str, Any]],
    stored: list[str],
    table: PriceTable | None,
    model: str | None,
    by_custom_id: bool,
    logger: LoggerLike | None,
) -> dict[str, Any]:
    total = merged.total
    missing = max(0, shape.input_lines - total.lines) if shape.input_lines is not None else 0
    cost: dict[str, Any] | None = None
    if table is not None and model is not None:
        if model in table.prices:
            c = table.cost(model, total.prompt_tokens, total.completion_tokens)
            cost = {"amount": c.amount, "currency": c.currency, "model": model}
        elif logger is not None:
            logger.warning("No price for model %r in the price table: no cost computed", model)
    summary: dict[str, Any] = {
        "kind": SHARDED_KIND,
        "status": shape.status,
        "batch_ids": [b["batch_id"] for b in batches],
        "output_path": stored[0],
        "error_path": stored[1],
        "order": "input" if by_custom_id else "results",
        "lines": total.lines,
        "succeeded": total.succeeded,
        "failed": total.failed,
        "missing": missing,
        "retryable": merged.retryable,
        "replaced": merged.replaced,
        "tokens": _tokens(total),
        "cost": cost,
        "failed_examples": total.failed_examples,
        "per_shard": [
            {
                "shard": shard,
                "lines": c.lines,
                "succeeded": c.succeeded,
                "failed": c.failed,
                "tokens": _tokens(c),
                "cost": _cost(table, model, c),
            }
            for shard, c in sorted(_per_shard(shape, merged).items())
        ],
        "batches": batches,
        "deleted_files": [],
    }
    if logger is not None:
        logger.info(
            "Job of %d batches: %d results (%d succeeded, %d failed, %d replaced by a resubmission), "
            "%d requests without a result, %d tokens%s",
            len(batches),
            total.lines,
            total.succeeded,
            total.failed,
            merged.replaced,
            missing,
            total.total_tokens,
            f", cost {cost['amount']:.6g} {cost['currency']}".rstrip() if cost else "",
        )
    return summary
