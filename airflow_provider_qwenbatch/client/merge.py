"""Merge the results of many batches (the shards of one input, and their resubmissions) into two files.

Every line is judged by :func:`~.results.classify_line` (the one rule): a successful answer
goes to ``output.jsonl``, anything else (a non-200 line of an output file too) to
``errors.jsonl``, each copied byte for byte. Memory does not grow with the size of the files:

- one attempt per request and no ordering asked: a single streaming pass;
- resubmissions (``attempt`` > 1) or ``order="input"``: an on-disk index in a temporary
  SQLite file (``custom_id -> file, offset, length, outcome``; upserted in the order the files
  are given, so each ``custom_id`` keeps its LAST outcome), then a second pass that copies each
  kept line from its file. With ``order="input"`` the results come in the order of the
  original input (read from the shard files); results whose ``custom_id`` is not in the input
  come last, in file order.

:func:`write_resubmission` picks the requests worth sending again (see
:func:`~.results.is_retryable`) from the shard inputs, unchanged, into a follow-up input file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.results import LineOutcome, ResultCounts, classify_line

_BATCH_ROWS = 10_000
_OPEN_FILES = 32


@dataclass(frozen=True)
class ResultFiles:
    """The downloaded result files of one batch.

    :param shard: the shard the batch ran (1-based), for per-shard counts; ``None`` for a
        resubmission that mixes shards (its lines count under the shard that first had them).
    :param output_path: its output file, if any.
    :param error_path: its error file, if any.
    :param attempt: 1 for the first batch of a request, 2 for its first resubmission...; give
        files in attempt order: the last outcome of a ``custom_id`` wins.
    """

    shard: int | None
    output_path: str | None = None
    error_path: str | None = None
    attempt: int = 1

    def paths(self) -> list[str]:
        """The files that exist, output first."""
        return [p for p in (self.output_path, self.error_path) if p]


@dataclass
class MergeSummary:
    """What the merged files hold.

    :param output_path: the merged successes.
    :param errors_path: the merged failures.
    :param total: counts over the final outcome of each request.
    :param per_shard: the same, per shard number (0: lines of an unknown shard).
    :param retryable: failed requests whose failure another try can fix.
    :param replaced: earlier outcomes replaced by a later attempt's.
    """

    output_path: str
    errors_path: str
    total: ResultCounts = field(default_factory=ResultCounts)
    per_shard: dict[int, ResultCounts] = field(default_factory=dict)
    retryable: int = 0
    replaced: int = 0


def _lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    """(1-based number, offset, raw line) of every non-blank line of a file."""
    with open(path, "rb") as fh:
        offset = 0
        for n, raw in enumerate(fh, start=1):
            if not raw.isspace():  # (strip() would copy every line)
                yield n, offset, raw
            offset += len(raw)


def _newline(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


def _record(summary: MergeSummary, shard: int, outcome: LineOutcome, n: int) -> None:
    counts = summary.per_shard.get(shard)
    if counts is None:
        counts = summary.per_shard[shard] = ResultCounts()
    counts.record(outcome, n)
    if outcome.retryable:
        summary.retryable += 1


def merge_results(
    results: Sequence[ResultFiles],
    output_path: str | os.PathLike[str],
    errors_path: str | os.PathLike[str],
    *,
    order: Literal["results", "input"] = "results",
    inputs: Sequence[str | os.PathLike[str]] = (),
    retry_cancelled: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    logger: LoggerLike | None = None,
) -> MergeSummary:
    """Merge result files into one ``output.jsonl`` and one ``errors.jsonl``, with counts.

    :param results: the result files of every batch, in attempt order.
    :param output_path: where to write the successes.
    :param errors_path: where to write the failures.
    :param order: ``results`` (the order of the files) or ``input`` (the order of ``inputs``).
    :param inputs: the shard input files, in order (needed for ``order="input"``).
    :param retry_cancelled: see :func:`~.results.is_retryable`.
    :param work_dir: where the temporary index goes (default: the system temp folder).
    :param logger: logs progress every million lines.
    """
    if order == "input" and not inputs:
        raise ValueError('order="input" needs the shard input files (inputs=...)')
    summary = MergeSummary(os.fspath(output_path), os.fspath(errors_path))
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(errors_path).parent.mkdir(parents=True, exist_ok=True)
    indexed = order == "input" or any(r.attempt > 1 for r in results)
    with open(output_path, "wb") as out, open(errors_path, "wb") as err:
        if indexed:
            _merge_indexed(results, out, err, summary, order, inputs, retry_cancelled, work_dir, logger)
        else:
            _merge_streaming(results, out, err, summary, retry_cancelled, logger)
    for counts in summary.per_shard.values():
        summary.total.add(counts)
    if logger is not None:
        t = summary.total
        logger.info(
            "merged %d results: %d succeeded, %d failed (%d retryable)",
            t.lines,
            t.succeeded,
            t.failed,
            summary.retryable,
        )
    return summary


def _merge_streaming(
    results: Sequence[ResultFiles],
    out: IO[bytes],
    err: IO[bytes],
    summary: MergeSummary,
    retry_cancelled: bool,
    logger: LoggerLike | None,
) -> None:
    seen = 0
    for files in results:
        counts = summary.per_shard.setdefault(files.shard or 0, ResultCounts())
        for path in files.paths():
            # The hot loop of a large merge: no generator, no helper per line.
            with open(path, "rb") as fh:
                for n, raw in enumerate(fh, start=1):
                    if raw.isspace():
                        continue
                    outcome = classify_line(raw, retry_cancelled=retry_cancelled)
                    (out if outcome.ok else err).write(raw if raw.endswith(b"\n") else raw + b"\n")
                    counts.record(outcome, n)
                    if outcome.retryable:
                        summary.retryable += 1
                    seen += 1
                    if logger is not None and seen % 1_000_000 == 0:
                        logger.info("merge: %d result lines", seen)


class _Readers:
    """A few open files for reading lines back by offset (thousands of shards must not use thousands of fds)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.open: OrderedDict[int, IO[bytes]] = OrderedDict()

    def read(self, f: int, off: int, length: int) -> bytes:
        fh = self.open.pop(f, None)
        if fh is None:
            fh = open(self.paths[f], "rb")  # noqa: SIM115 - closed in close() or on eviction
            if len(self.open) >= _OPEN_FILES:
                self.open.popitem(last=False)[1].close()
        self.open[f] = fh
        fh.seek(off)
        return fh.read(length)

    def close(self) -> None:
        for fh in self.open.values():
            fh.close()


def _index_db(work_dir: str | os.PathLike[str] | None) -> tuple[sqlite3.Connection, str]:
    fd, name = tempfile.mkstemp(prefix="qwenbatch-merge-", suffix=".sqlite", dir=work_dir)
    os.close(fd)
    db = sqlite3.connect(name)
    # A throw-away index: no journal, no fsync; a bounded page cache keeps memory flat.
    db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;")
    db.execute("PRAGMA temp_store=FILE")
    return db, name


_UPSERT = (
    "INSERT INTO r (cid, f, off, len, ok, retry, pt, ct, tt, shard, err, n) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(cid) DO UPDATE SET f=excluded.f, off=excluded.off, len=excluded.len, ok=excluded.ok, "
    "retry=excluded.retry, pt=excluded.pt, ct=excluded.ct, tt=excluded.tt, err=excluded.err, n=excluded.n, "
    "shard=CASE WHEN r.shard=0 THEN excluded.shard ELSE r.shard END"
)


def _index_results(
    db: sqlite3.Connection, results: Sequence[ResultFiles], retry_cancelled: bool, logger: LoggerLike | None
) -> tuple[list[str], int]:
    """Upsert every result line into table ``r``; returns the file list and how many outcomes were replaced."""
    db.execute(
        "CREATE TABLE r (cid TEXT PRIMARY KEY, f INTEGER, off INTEGER, len INTEGER, ok INTEGER, retry INTEGER,"
        " pt INTEGER, ct INTEGER, tt INTEGER, shard INTEGER, err TEXT, n INTEGER, pos INTEGER)"
    )
    paths: list[str] = []
    rows: list[tuple[object, ...]] = []
    lines = 0
    for files in results:
        for path in files.paths():
            f = len(paths)
            paths.append(path)
            for n, off, raw in _lines(path):
                o = classify_line(raw, retry_cancelled=retry_cancelled)
                # An unreadable line has no custom_id: a key of its own keeps it (never merged away).
                cid = o.custom_id if o.custom_id is not None else f"\x00{f}:{off}"
                rows.append(
                    (
                        cid,
                        f,
                        off,
                        len(raw),
                        int(o.ok),
                        int(o.retryable),
                        *o.usage,
                        files.shard or 0,
                        o.error or None,
                        n,
                    )
                )
                lines += 1
                if len(rows) >= _BATCH_ROWS:
                    db.executemany(_UPSERT, rows)
                    rows.clear()
                if logger is not None and lines % 1_000_000 == 0:
                    logger.info("merge index: %d result lines", lines)
    db.executemany(_UPSERT, rows)
    kept = db.execute("SELECT count(*) FROM r").fetchone()[0]
    return paths, lines - kept


def _input_ids(path: str | os.PathLike[str]) -> Iterator[str]:
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                cid = json.loads(raw).get("custom_id")
                if isinstance(cid, str):
                    yield cid


def _merge_indexed(
    results: Sequence[ResultFiles],
    out: IO[bytes],
    err: IO[bytes],
    summary: MergeSummary,
    order: str,
    inputs: Sequence[str | os.PathLike[str]],
    retry_cancelled: bool,
    work_dir: str | os.PathLike[str] | None,
    logger: LoggerLike | None,
) -> None:
    db, name = _index_db(work_dir)
    readers: _Readers | None = None
    try:
        paths, summary.replaced = _index_results(db, results, retry_cancelled, logger)
        columns = "f, off, len, ok, retry, pt, ct, tt, shard, err, n, cid"
        if order == "input":
            pos = 0
            batch: list[tuple[int, str]] = []
            for path in inputs:
                for cid in _input_ids(path):
                    pos += 1
                    batch.append((pos, cid))
                    if len(batch) >= _BATCH_ROWS:
                        db.executemany("UPDATE r SET pos=? WHERE cid=?", batch)
                        batch.clear()
            db.executemany("UPDATE r SET pos=? WHERE cid=?", batch)
            db.execute("CREATE INDEX r_pos ON r(pos)")
            queries = [
                f"SELECT {columns} FROM r WHERE pos IS NOT NULL ORDER BY pos",
                f"SELECT {columns} FROM r WHERE pos IS NULL ORDER BY f, off",
            ]
        else:
            queries = [f"SELECT {columns} FROM r ORDER BY f, off"]
        readers = _Readers(paths)
        for query in queries:
            for f, off, length, ok, retry, pt, ct, tt, shard, error, n, cid in db.execute(query):
                raw = readers.read(f, off, length)
                (out if ok else err).write(_newline(raw))
                readable = not cid.startswith("\x00")
                outcome = LineOutcome(
                    cid if readable else None, bool(ok), bool(retry), error or "", (pt, ct, tt)
                )
                _record(summary, shard, outcome, n)
    finally:
        if readers is not None:
            readers.close()
        db.close()
        Path(name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Resubmission:
    """A follow-up input file: the requests worth sending again, exactly as first sent.

    :param path: the file (split it with :func:`~.shards.split_jsonl_file` before upload).
    :param lines: requests in it.
    :param retryable: of those, requests whose last outcome was a retryable failure.
    :param missing: of those, requests with no result line at all (a batch that expired or
        was cancelled may not write them; DashScope's behaviour is UNCONFIRMED).
    """

    path: str
    lines: int
    retryable: int
    missing: int


def write_resubmission(
    results: Sequence[ResultFiles],
    inputs: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    retry_cancelled: bool = True,
    include_missing: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> Resubmission:
    """Write the input lines whose last outcome failed for a retryable reason as a follow-up input file.

    Content and validation failures (4xx) are not picked: sending them again fails again, and
    is billed when it does not.

    :param results: every batch's result files so far, in attempt order (the last outcome wins).
    :param inputs: the input files those batches ran (the shards), in order.
    :param dest: where to write the follow-up input.
    :param retry_cancelled: see :func:`~.results.is_retryable`.
    :param include_missing: also pick requests that have no result line at all.
    :param work_dir: where the temporary index goes.
    """
    db, name = _index_db(work_dir)
    lines = retryable = missing = 0
    try:
        _index_results(db, results, retry_cancelled, None)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            for path in inputs:
                for _, _, raw in _lines(os.fspath(path)):
                    cid = json.loads(raw).get("custom_id")
                    row = db.execute("SELECT ok, retry FROM r WHERE cid=?", (cid,)).fetchone()
                    if row is None:
                        if not include_missing:
                            continue
                        missing += 1
                    elif row[1]:
                        retryable += 1
                    else:
                        continue
                    out.write(_newline(raw))
                    lines += 1
    finally:
        db.close()
        Path(name).unlink(missing_ok=True)
    return Resubmission(os.fspath(dest), lines, retryable, missing)
