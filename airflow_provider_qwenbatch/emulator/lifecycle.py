"""The batch lifecycle: the one loop that moves every batch in flight on, line by line.

No asyncio task per batch: :meth:`Lifecycle.run_ticker` wakes every ``tick_interval``,
advances every in-flight batch from the time elapsed since its last pass, and processes at
most ``max_lines_per_tick`` lines in total per pass, so 1,000 concurrent batches progress
while requests are still answered. Everything here runs on the event loop thread, except
the input scans, which run in worker threads and touch no shared state.

``validating`` -> (scan) -> ``failed`` or ``in_progress`` -> (lines) -> ``finalizing`` ->
``completed``; ``cancelling`` -> ``cancelled``; any of them -> ``expired`` when the
completion window (sped up by ``time_scale``) runs out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.emulator.answers import answer_line, line_outcome, unfinished_line
from airflow_provider_qwenbatch.emulator.batches import BatchBook
from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.files import FileStore
from airflow_provider_qwenbatch.emulator.persistence import Persistence
from airflow_provider_qwenbatch.emulator.records import BatchRecord, StoredFile, new_hex
from airflow_provider_qwenbatch.emulator.validation import Limits, ScanResult, scan_input

log = logging.getLogger(__name__)


class Lifecycle:
    """Moves the batches of a :class:`BatchBook` through their statuses.

    :param book: the batches.
    :param files: the file store (result files are published there).
    :param persistence: where progress is noted.
    :param config: returns the current config (it can change at runtime).
    :param limits: returns the current input limits.
    :param on_end: called with each batch that reaches a terminal status (once per batch).
    """

    def __init__(
        self,
        book: BatchBook,
        files: FileStore,
        persistence: Persistence,
        config: Callable[[], EmulatorConfig],
        limits: Callable[[], Limits],
        on_end: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self.book = book
        self.files = files
        self.persistence = persistence
        self._config = config
        self._limits = limits
        self._on_end = on_end

    def resume(self, rec: BatchRecord, now: float) -> None:
        """Take up a batch loaded from ``state.json`` that was in flight when the emulator stopped.

        :param rec: the batch.
        :param now: wall time.
        """
        self.book.active[rec.id] = None
        rec.last_wall = now
        rec.progress = float(rec.processed)
        if rec.status == BatchStatus.VALIDATING.value:
            rec.phase_wall = now  # validate again from the start
        elif rec.validated:
            scan = scan_input(rec.input_path, rec.endpoint, self._limits())
            rec.offsets, rec.custom_ids = scan.offsets, scan.custom_ids
            # Lines written after the last save are dropped and run again.
            self._truncate(self._partial(rec, "out"), rec.out_bytes)
            self._truncate(self._partial(rec, "err"), rec.err_bytes)

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        if path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(size)

    async def run_ticker(self) -> None:
        """Advance every in-flight batch forever, one pass per ``tick_interval``."""
        while True:
            await asyncio.sleep(self._config().tick_interval)
            try:
                await self.tick()
            except Exception:
                log.exception("emulator tick failed")

    async def tick(self, now: float | None = None) -> None:
        """One pass over the in-flight batches.

        :param now: wall time to use (tests).
        """
        now = time.time() if now is None else now
        budget = self._config().max_lines_per_tick
        for i, batch_id in enumerate(list(self.book.active)):
            rec = self.book.batches.get(batch_id)
            if rec is None:
                self.book.active.pop(batch_id, None)
                continue
            budget -= self._advance(rec, now, budget)
            if i % 200 == 199:
                await asyncio.sleep(0)  # let requests in between large groups of batches
        # Rotate so that a capped budget does not always favour the same batches.
        if len(self.book.active) > 1 and budget <= 0:
            first = next(iter(self.book.active))
            self.book.active.pop(first)
            self.book.active[first] = None
        self.persistence.flush_if_due()

    def _expired(self, rec: BatchRecord, now: float) -> bool:
        return (now - rec.created_wall) * self._config().time_scale >= rec.window_seconds

    def _advance(self, rec: BatchRecord, now: float, budget: int) -> int:
        status = rec.status
        used = 0
        if status == BatchStatus.VALIDATING.value:
            if self._expired(rec, now):
                self._finish(rec, BatchStatus.EXPIRED, now)
            elif now - rec.phase_wall >= self._config().validation_delay:
                self._validate(rec, now)
        elif status == BatchStatus.IN_PROGRESS.value:
            if self._expired(rec, now):
                self._finish(rec, BatchStatus.EXPIRED, now)
                return 0
            rec.progress = min(
                float(rec.total), rec.progress + self._config().lines_per_second * (now - rec.last_wall)
            )
            rec.last_wall = now
            n = min(int(rec.progress) - rec.processed, max(budget, 0))
            if n > 0:
                self._process(rec, n, now)
                used = n
            if rec.processed >= rec.total:
                rec.status = BatchStatus.FINALIZING.value
                rec.finalizing_at = int(now)
                rec.phase_wall = now
            self.persistence.dirty = True
        elif status == BatchStatus.FINALIZING.value:
            if now - rec.phase_wall >= self._config().finalize_delay:
                self._finish(rec, BatchStatus.COMPLETED, now)
        elif status == BatchStatus.CANCELLING.value:
            if rec.cancel_wall is None or now - rec.cancel_wall >= self._config().cancel_delay:
                self._finish(rec, BatchStatus.CANCELLED, now)
        else:
            self.book.active.pop(rec.id, None)
        return used

    def _validate(self, rec: BatchRecord, now: float) -> None:
        scan = self.book.scans.get(rec.id)
        if scan is None:
            loop = asyncio.get_running_loop()
            self.book.scans[rec.id] = loop.run_in_executor(
                None, scan_input, rec.input_path, rec.endpoint, self._limits()
            )
            return
        if not scan.done():
            return
        del self.book.scans[rec.id]
        try:
            result = scan.result()
        except Exception as exc:
            result = ScanResult(
                errors=[{"code": "invalid_file", "message": str(exc), "param": None, "line": None}]
            )
        if result.errors:
            rec.status = BatchStatus.FAILED.value
            rec.errors = result.errors
            rec.failed_at = int(now)
            self.book.active.pop(rec.id, None)
            self.files.unlink_unused(self.book.paths_in_use())
            self._ended(rec)
        else:
            rec.validated = True
            rec.offsets, rec.custom_ids = result.offsets, result.custom_ids
            rec.total = len(result.offsets)
            rec.status = BatchStatus.IN_PROGRESS.value
            rec.in_progress_at = int(now)
            rec.last_wall = now
            rec.progress = 0.0
        self.persistence.mark_dirty()

    def _partial(self, rec: BatchRecord, kind: str) -> Path:
        return self.files.files_dir / f"{rec.id}.{kind}.partial"

    def _process(self, rec: BatchRecord, n: int, now: float) -> None:
        c = self._config()
        out_lines: list[tuple[bytes, list[Any]]] = []
        err_lines: list[tuple[bytes, list[Any]]] = []
        start = rec.processed
        with open(rec.input_path, "rb") as fh:
            fh.seek(rec.offsets[start])
            for index in range(start, start + n):
                raw = fh.readline()
                request = json.loads(raw)
                cid = rec.custom_ids[index]
                outcome = line_outcome(
                    c.seed,
                    cid,
                    c.line_error_rate,
                    c.line_soft_error_rate,
                    rec.id if c.transient_line_errors else None,
                )
                line = answer_line(
                    custom_id=cid,
                    body=request.get("body") or {},
                    endpoint=rec.endpoint,
                    outcome=outcome,
                    seed=c.seed,
                    now=int(now),
                    embedding_dimensions=c.embedding_dimensions,
                )
                data = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                status_code = line["response"]["status_code"]
                if outcome == "error":
                    err_lines.append((data, [index + 1, cid, outcome, status_code, "error"]))
                    rec.failed += 1
                else:
                    out_lines.append((data, [index + 1, cid, outcome, status_code, "output"]))
                    rec.completed += 1
        if c.shuffle_output:
            rng = random.Random(f"{c.seed}:{rec.id}:{start}")
            rng.shuffle(out_lines)
            rng.shuffle(err_lines)
        rec.out_bytes += self._append(rec, "out", out_lines)
        rec.err_bytes += self._append(rec, "err", err_lines)
        rec.processed = start + n

    def _append(self, rec: BatchRecord, kind: str, lines: list[tuple[bytes, list[Any]]]) -> int:
        if not lines:
            return 0
        with open(self._partial(rec, kind), "ab") as out:
            out.write(b"".join(data for data, _ in lines))
        rec.results.extend(meta for _, meta in lines)
        return sum(len(data) for data, _ in lines)

    def _finish(self, rec: BatchRecord, status: BatchStatus, now: float) -> None:
        """Move to a terminal status: write unfinished lines, publish the result files."""
        scan = self.book.scans.pop(rec.id, None)
        if scan is not None:
            scan.cancel()
        if status in (BatchStatus.CANCELLED, BatchStatus.EXPIRED) and rec.validated:
            code: Literal["batch_cancelled", "batch_expired"] = (
                "batch_cancelled" if status is BatchStatus.CANCELLED else "batch_expired"
            )
            pending = [
                (
                    json.dumps(unfinished_line(cid, code), ensure_ascii=False, separators=(",", ":")).encode()
                    + b"\n",
                    [i + 1, cid, code, None, "error"],
                )
                for i, cid in enumerate(rec.custom_ids[rec.processed :], start=rec.processed)
            ]
            rec.failed += len(pending)
            rec.err_bytes += self._append(rec, "err", pending)
            rec.processed = rec.total
        for kind in ("out", "err"):
            partial = self._partial(rec, kind)
            size = rec.out_bytes if kind == "out" else rec.err_bytes
            if not partial.exists() or size == 0:
                continue
            file_id = f"file-batch_output-{new_hex()}"
            path = self.files.files_dir / file_id
            os.replace(partial, path)
            name = f"{rec.id}_{'success' if kind == 'out' else 'error'}.jsonl"
            lines = sum(1 for r in rec.results if r[4] == ("output" if kind == "out" else "error"))
            self.files.files[file_id] = StoredFile(
                file_id, name, "batch_output", size, int(now), str(path), lines, 0
            )
            if kind == "out":
                rec.output_file_id = file_id
            else:
                rec.error_file_id = file_id
        rec.status = status.value
        stamp = int(now)
        if status is BatchStatus.COMPLETED:
            rec.completed_at = stamp
        elif status is BatchStatus.CANCELLED:
            rec.cancelled_at = stamp
        elif status is BatchStatus.EXPIRED:
            rec.expired_at = stamp
        self.book.active.pop(rec.id, None)
        # The offsets and ids are only needed while lines still run.
        rec.offsets, rec.custom_ids = [], []
        self.files.unlink_unused(self.book.paths_in_use())
        self.persistence.mark_dirty()
        self._ended(rec)

    def _ended(self, rec: BatchRecord) -> None:
        if self._on_end is not None:
            try:
                self._on_end(rec)
            except Exception:  # a hook must not break the lifecycle of the other batches
                log.exception("the end-of-batch hook failed for %s", rec.id)
