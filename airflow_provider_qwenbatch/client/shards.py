"""Split an input of any size into shards that each fit one batch, in the pass that validates it.

One streaming pass over a JSONL file (or an iterable of request dicts) checks every line with
the validator of :mod:`.jsonl` and writes it, unchanged, into the current shard file; a new
shard starts when the next line would break a per-batch limit (lines, bytes; the test model's
own). Rules that span the whole input stay whole-input rules: ``custom_id`` is unique across
every shard and there is one model, and each problem names the ORIGINAL file and line (a
request list: its position), never a shard. It is all or nothing: on any problem every shard
file is removed and :class:`~.errors.InputValidationError` is raised, before anything is
uploaded.

Memory holds one line and the compact id table of :mod:`.idtable` (16 bytes a slot), whatever
the input's size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from airflow_provider_qwenbatch.client.billing import InputWarning
from airflow_provider_qwenbatch.client.hashed_file import HashedFile
from airflow_provider_qwenbatch.client.identity import InputFingerprint
from airflow_provider_qwenbatch.client.idtable import CompactIdIndex
from airflow_provider_qwenbatch.client.jsonl import (
    DEFAULT_LIMITS,
    TEST_MAX_FILE_BYTES,
    TEST_MAX_LINES,
    Checker,
    InputLimits,
    InputSummary,
    encode_request,
    open_input,
    scan_lines,
)
from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.models import TEST_MODEL

# The id table is sized from the lines in the first bytes of a file (see _reserve_ids).
_SAMPLE_BYTES = 256 * 1024
# Lines are gathered into chunks of about this size, each written and hashed in one call: two
# calls per line were a tenth of a large split.
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Shard:
    """One part of a split input, small enough for one batch.

    :param number: 1-based shard number, in input order.
    :param summary: the shard file's own summary (path, lines, bytes, sha256, model, endpoint).
    :param first_line: position in the original input of the shard's first request (1-based).
    :param last_line: position in the original input of its last request.
    """

    number: int
    summary: InputSummary
    first_line: int
    last_line: int

    @property
    def path(self) -> str:
        """The shard file."""
        return self.summary.path

    def fingerprint(self, completion_window: str) -> InputFingerprint:
        """The shard's input fingerprint: a retry re-attaches to the batch of this very shard.

        :param completion_window: the batch's window, e.g. ``24h``.
        """
        return InputFingerprint.of_content(
            self.summary.sha256,
            endpoint=self.summary.endpoint,
            completion_window=completion_window,
            model=self.summary.model,
        )


@dataclass
class ShardPlan:
    """A validated input split into shards.

    :param source: the original input, as named in errors.
    :param endpoint: the batch endpoint of every shard.
    :param model: the one model of the input.
    :param folder: where the shard files are.
    :param shards: the shards, in input order.
    :param total_lines: requests in the whole input (the sum over the shards).
    :param total_bytes: bytes written over all shards.
    :param warnings: billing warnings of the whole input (first original line and count).
    :param owns_folder: whether :meth:`cleanup` removes the folder (it was made for this plan).
    """

    source: str
    endpoint: str
    model: str | None
    folder: str
    shards: list[Shard] = field(default_factory=list)
    total_lines: int = 0
    total_bytes: int = 0
    warnings: tuple[InputWarning, ...] = ()
    owns_folder: bool = False

    def cleanup(self) -> None:
        """Remove the shard files (and the folder, if it was made for this plan)."""
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for shard in self.shards:
            Path(shard.path).unlink(missing_ok=True)


def shard_limits(model: str | None, limits: InputLimits, max_lines_per_batch: int | None) -> tuple[int, int]:
    """The lines and bytes one shard may hold: the API's per-file limits, the test model's, the caller's.

    :param model: the input's model (``batch-test-model`` has 100 lines / 1 MB).
    :param limits: the per-file limits.
    :param max_lines_per_batch: the caller's cap on lines per batch.
    :raises ValueError: when the cap is not between 1 and the per-file line limit.
    """
    max_lines, max_bytes = limits.max_lines, limits.max_bytes
    if max_lines_per_batch is not None:
        if not 1 <= max_lines_per_batch <= limits.max_lines:
            raise ValueError(
                f"max_lines_per_batch must be between 1 and {limits.max_lines}, got {max_lines_per_batch}"
            )
        max_lines = max_lines_per_batch
    if model == TEST_MODEL:
        max_lines, max_bytes = min(max_lines, TEST_MAX_LINES), min(max_bytes, TEST_MAX_FILE_BYTES)
    return max_lines, max_bytes


class _ShardWriter:
    """Writes lines into numbered shard files, starting the next one before a limit would break."""

    def __init__(
        self,
        checker: Checker,
        folder: Path,
        endpoint: str,
        limits: InputLimits,
        max_lines_per_batch: int | None,
        logger: LoggerLike | None = None,
    ) -> None:
        self.checker = checker
        self.logger = logger
        self.folder = folder
        self.endpoint = endpoint
        self.limits = limits
        self.max_lines_per_batch = max_lines_per_batch
        self.shards: list[Shard] = []
        self.created: list[Path] = []
        self._fh: HashedFile | None = None
        self._buf = bytearray()
        self._lines = 0
        self._bytes = 0
        self._first = 0
        self._last = 0
        self._caps: tuple[str | None, int, int] | None = None

    def _limits(self) -> tuple[str | None, int, int]:
        model = self.checker.model
        if self._caps is None or self._caps[0] != model:
            self._caps = (model, *shard_limits(model, self.limits, self.max_lines_per_batch))
        return self._caps

    def add(self, n: int, data: bytes) -> None:
        """Place one request line read at original position ``n`` (a missing final newline is added)."""
        checker = self.checker
        if checker.problems:
            # The input is refused anyway: keep checking, stop writing.
            return
        if not data.endswith(b"\n"):
            data += b"\n"
        size = len(data)
        caps = self._caps
        if caps is None or caps[0] is not checker.model:
            caps = self._limits()
        _, max_lines, max_bytes = caps
        if size > max_bytes:
            checker.add(
                n,
                "line_too_large",
                f"line is {size} bytes; one batch of this model holds at most {max_bytes}",
            )
            return
        if self._fh is None or self._lines >= max_lines or self._bytes + size > max_bytes:
            self._start(n)
        buf = self._buf
        buf += data
        if len(buf) >= _CHUNK:
            self._flush()
        self._lines += 1
        self._bytes += size
        self._last = n

    def _start(self, n: int) -> None:
        self._close()
        number = len(self.shards) + 1
        path = self.folder / f"shard-{number:05d}.jsonl"
        self.created.append(path)
        self._fh = HashedFile(path)
        self._lines = self._bytes = 0
        self._first = n

    def _flush(self) -> None:
        # The chunk is handed over (written and hashed in the HashedFile's thread), not copied.
        assert self._fh is not None
        if self._buf:
            self._fh.write(self._buf)
            self._buf = bytearray()

    def _close(self) -> None:
        if self._fh is None:
            return
        self._flush()
        sha256 = self._fh.close()
        summary = InputSummary(
            os.fspath(self._fh.path),
            self._lines,
            self._bytes,
            self.checker.model,
            self.endpoint,
            sha256,
        )
        self.shards.append(Shard(len(self.shards) + 1, summary, self._first, self._last))
        self._fh = None
        if self.logger is not None:
            self.logger.info(
                "shard %d: %d lines, %d bytes (input %s %d-%d)",
                len(self.shards),
                summary.lines,
                summary.bytes,
                self.checker.unit + "s",
                self._first,
                self._last,
            )

    def finish(self) -> list[Shard]:
        self._close()
        return self.shards

    def abort(self) -> None:
        self._buf = bytearray()
        if self._fh is not None:
            self._fh.abort()
            self._fh = None


def _reserve_ids(index: CompactIdIndex, fh: IO[bytes]) -> None:
    """Size the id table for the whole file from the lines in its first bytes.

    Growing it one doubling at a time rehashes every id about twice over (a twentieth of a large
    split) and holds the old and the new table at once at each step. The estimate is capped so
    that the table reserved stays under about 1/16 of the file's size (16 bytes a slot).
    """
    size = os.fstat(fh.fileno()).st_size
    sample = fh.read(_SAMPLE_BYTES)
    fh.seek(0)
    newlines = sample.count(b"\n")
    if newlines == 0 or len(sample) == size:
        return
    estimate = size * newlines // len(sample)
    index.reserve(min(estimate, size // 32 // 16 * 7 // 10))


def _run(
    source: str,
    endpoint: str,
    folder: str | os.PathLike[str] | None,
    limits: InputLimits,
    max_lines_per_batch: int | None,
    unit: str,
    strict_cost: bool,
    feed: Any,
    logger: LoggerLike | None,
) -> ShardPlan:
    shard_limits(None, limits, max_lines_per_batch)  # a bad cap fails before any file is made
    owns = folder is None
    where = Path(tempfile.mkdtemp(prefix="qwenbatch-shards-")) if folder is None else Path(folder)
    where.mkdir(parents=True, exist_ok=True)
    checker = Checker(source, endpoint, limits, unit, strict_cost=strict_cost, seen=CompactIdIndex())
    writer = _ShardWriter(checker, where, endpoint, limits, max_lines_per_batch, logger)
    plan = ShardPlan(source, endpoint, None, os.fspath(where), owns_folder=owns)
    try:
        feed(checker, writer)
        shards = writer.finish()
        plan.shards = shards
        checker.finish(whole_file=False)
    except BaseException:
        writer.abort()
        # All or nothing: no shard of a refused input is left to be uploaded by mistake.
        for path in writer.created:
            path.unlink(missing_ok=True)
        if owns:
            shutil.rmtree(where, ignore_errors=True)
        raise
    plan.model = checker.model
    plan.total_lines = sum(s.summary.lines for s in shards)
    plan.total_bytes = sum(s.summary.bytes for s in shards)
    plan.warnings = checker.warnings
    return plan


def split_jsonl_file(
    path: str | os.PathLike[str],
    endpoint: str,
    *,
    folder: str | os.PathLike[str] | None = None,
    max_lines_per_batch: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    source: str | None = None,
    strict_cost: bool = False,
    logger: LoggerLike | None = None,
) -> ShardPlan:
    """Validate a JSONL input file of any size and split it into shards, in one streaming pass.

    Each line is written to its shard exactly as read (a last line without a newline gets one).

    :param path: the input file (local).
    :param endpoint: the batch endpoint every line's ``url`` must equal.
    :param folder: where to write the shard files (``shard-00001.jsonl``...); a new temporary
        folder when not given (removed by :meth:`ShardPlan.cleanup`).
    :param max_lines_per_batch: lines per shard (default and cap: the per-file limit, 50,000;
        the test model's 100 always applies).
    :param limits: the per-batch limits (each shard keeps them; the input as a whole need not).
    :param source: how to name the input in errors (default: the path).
    :param strict_cost: refuse the billing surprises instead of returning them as warnings.
    :param logger: logs each shard as it is completed (lines, bytes, original line range).
    :raises InputValidationError: naming the original file and line of each problem; no shard is kept.
    :raises ValueError: when ``max_lines_per_batch`` is out of range.
    """
    local = os.fspath(path)
    name = source or local

    def feed(checker: Checker, writer: _ShardWriter) -> None:
        with open_input(local, name) as fh:
            if isinstance(checker.seen, CompactIdIndex):
                _reserve_ids(checker.seen, fh)
            scan_lines(fh, checker, None, writer.add)

    return _run(name, endpoint, folder, limits, max_lines_per_batch, "line", strict_cost, feed, logger)


def split_requests(
    requests: Iterable[Mapping[str, Any]],
    endpoint: str,
    *,
    folder: str | os.PathLike[str] | None = None,
    max_lines_per_batch: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    source: str = "requests",
    strict_cost: bool = False,
    logger: LoggerLike | None = None,
) -> ShardPlan:
    """Validate request dicts (a list, or a generator of any length) and write them as shards.

    Consumed once, one request at a time. Errors name the position (``request 5 (index 4)``).

    :param requests: dicts ``{custom_id, method, url, body}``; ``method`` and ``url`` default
        to ``POST`` and ``endpoint``.
    :param endpoint: the batch endpoint.
    :param folder: where to write the shard files (a new temporary folder when not given).
    :param max_lines_per_batch: lines per shard (default and cap 50,000).
    :param limits: the per-batch limits.
    :param source: how to name the input in errors.
    :param strict_cost: refuse the billing surprises instead of returning them as warnings.
    :param logger: logs each shard as it is completed.
    :raises InputValidationError: naming each request's position; no shard is kept.
    """

    def feed(checker: Checker, writer: _ShardWriter) -> None:
        for n, request in enumerate(requests, start=1):
            data = encode_request(checker, n, request)
            if data is not None:
                writer.add(n, data)

    return _run(source, endpoint, folder, limits, max_lines_per_batch, "request", strict_cost, feed, logger)
