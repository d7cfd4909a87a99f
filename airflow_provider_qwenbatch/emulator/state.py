"""The emulator's state: files, batches, the request log, and the one loop that advances batches.

No asyncio task per batch: :meth:`EmulatorState.run_ticker` wakes every ``tick_interval``,
advances every in-flight batch from the time elapsed since its last pass, and processes at
most ``max_lines_per_tick`` lines in total per pass, so 1,000 concurrent batches progress
while requests are still answered. Everything here runs on the event loop thread, except
the input scans and upload copies, which run in worker threads and touch no shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Literal

from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.window import parse_completion_window
from airflow_provider_qwenbatch.emulator.answers import answer_line, line_outcome, unfinished_line
from airflow_provider_qwenbatch.emulator.config import FAULT_KINDS, EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.validation import Limits, ScanResult, scan_input

STATE_FILE = "state.json"
_UTC8 = timezone(timedelta(hours=8))
_COPY_CHUNK = 1024 * 1024
_PERSIST_INTERVAL = 0.2


class ApiError(Exception):
    """An error answer: ``{"error": {message, type, param, code}}`` with an HTTP status.

    :param status: HTTP status.
    :param message: the message.
    :param code: the error code.
    :param param: the parameter concerned.
    :param type_: the error type.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def new_hex() -> str:
    """24 random hex digits, as in the recorded ids ``file-batch-<hex>``."""
    return uuid.uuid4().hex[:24]


@dataclass
class StoredFile:
    """A file of the Files API and where its bytes are.

    :param id: ``file-batch-<hex>`` (uploads) or ``file-batch_output-<hex>`` (results).
    :param filename: the name given at upload.
    :param purpose: ``batch`` for uploads, ``batch_output`` for results.
    :param bytes: size.
    :param created_at: Unix seconds.
    :param path: the bytes on disk.
    :param lines: lines counted while streaming in.
    :param max_line_bytes: longest line counted while streaming in.
    """

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: str
    lines: int = 0
    max_line_bytes: int = 0

    def public(self) -> dict[str, Any]:
        """The file object as the API shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "created_at": self.created_at,
        }

    @property
    def downloadable(self) -> bool:
        """Only result files can be downloaded, as on the real service."""
        return self.id.startswith("file-batch_output-")


@dataclass
class BatchRecord:
    """Everything about one batch: its public fields and the emulator's bookkeeping."""

    id: str
    endpoint: str
    input_file_id: str
    input_path: str
    completion_window: str
    window_seconds: float
    metadata: dict[str, Any] | None
    status: str
    created_wall: float
    phase_wall: float
    created_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    cancel_wall: float | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    processed: int = 0
    validated: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    out_bytes: int = 0
    err_bytes: int = 0
    # [1-based input line, custom_id, outcome, status_code or None, "output"|"error"]
    results: list[list[Any]] = field(default_factory=list)
    # Not persisted: rebuilt from the input file after a restart.
    offsets: list[int] = field(default_factory=list, repr=False)
    custom_ids: list[str] = field(default_factory=list, repr=False)
    progress: float = 0.0
    last_wall: float = 0.0

    _TRANSIENT = ("offsets", "custom_ids", "progress", "last_wall")

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        data = asdict(self)
        for key in self._TRANSIENT:
            data.pop(key, None)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        """Rebuild from :meth:`to_json`.

        :param data: the persisted form.
        """
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The batch object as the API shows it, with the keys of the recordings in their order."""
        # While cancelling, cancelling_at stays null as on the real service; it shows once cancelled.
        cancelling_at = self.cancelling_at if self.status == BatchStatus.CANCELLED.value else None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": list(self.errors)} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": None,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }

    def admin(self, *, lines: bool = True) -> dict[str, Any]:
        """The full state for ``GET /_emulator/batches``.

        :param lines: include the per-line results.
        """
        out: dict[str, Any] = {
            "batch": self.public(),
            "input_lines": self.total if self.validated else None,
            "processed": self.processed,
            "validated": self.validated,
            "cancel_requested_at": self.cancelling_at,
        }
        if lines:
            out["results"] = [
                {"line": r[0], "custom_id": r[1], "outcome": r[2], "status_code": r[3], "file": r[4]}
                for r in self.results
            ]
        return out


def parse_list_time(value: str, param: str) -> int:
    """Parse ``yyyyMMddHHmmss`` (or ``yyyyMMdd``) as UTC+8 wall-clock time into Unix seconds.

    :param value: the query value.
    :param param: its name, for the error.
    """
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=_UTC8).timestamp())
        except ValueError:
            continue
    raise ApiError(
        400, f"'{value}' is not a valid {param}; use yyyyMMddHHmmss.", code="invalid_value", param=param
    )


def copy_upload(src: IO[bytes], dest: str) -> tuple[int, int, int]:
    """Copy an upload to disk in chunks, counting bytes, lines and the longest line.

    Runs in a worker thread; memory holds one chunk whatever the file's size.

    :param src: the uploaded bytes.
    :param dest: where to write them.
    :return: ``(bytes, lines, longest line)``.
    """
    size = lines = longest = current = 0
    last = b""
    with open(dest, "wb") as out:
        while True:
            chunk = src.read(_COPY_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            size += len(chunk)
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    current += len(chunk) - start
                    break
                current += nl - start
                longest = max(longest, current)
                current = 0
                lines += 1
                start = nl + 1
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1
        longest = max(longest, current)
    return size, lines, longest


class EmulatorState:
    """Files, batches, faults and the request log of one emulator.

    :param config: the settings (copied; change them through :meth:`update_config`).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config.model_copy(deep=True)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config.state_dir:
            self.root = Path(config.state_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="qwenbatch-emulator-")
            self.root = Path(self._tmp.name)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.active: dict[str, None] = {}  # insertion-ordered set of in-flight batch ids
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.request_log_size)
        self.request_seq = 0
        self.fault_rng = random.Random(self.config.seed)
        self.started_wall = time.time()
        self._scans: dict[str, asyncio.Future[ScanResult]] = {}
        self._dirty = False
        self._last_flush = 0.0
        self._doomed_paths: set[str] = set()
        if self.config.state_dir:
            self._load()

    # ---------------------------------------------------------------- persistence
    @property
    def persistent(self) -> bool:
        """Whether state survives a restart."""
        return self._tmp is None

    def mark_dirty(self, *, now: bool = False) -> None:
        """Note a change; with ``now``, write it at once (API mutations), else on the next tick.

        :param now: write immediately.
        """
        self._dirty = True
        if now:
            self.flush()

    def flush(self) -> None:
        """Write ``state.json`` atomically if anything changed."""
        if not self._dirty or not self.persistent:
            self._dirty = False
            return
        data = {
            "version": 1,
            "files": [asdict(f) for f in self.files.values()],
            "batches": [b.to_json() for b in self.batches.values()],
        }
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.root / STATE_FILE)
        self._dirty = False
        self._last_flush = time.monotonic()

    def _load(self) -> None:
        path = self.root / STATE_FILE
        if not path.exists():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        for f in data.get("files", []):
            stored = StoredFile(**f)
            self.files[stored.id] = stored
        now = time.time()
        for b in data.get("batches", []):
            rec = BatchRecord.from_json(b)
            self.batches[rec.id] = rec
            if BatchStatus(rec.status).is_terminal:
                continue
            self.active[rec.id] = None
            rec.last_wall = now
            rec.progress = float(rec.processed)
            if rec.status == BatchStatus.VALIDATING.value:
                rec.phase_wall = now  # validate again from the start
            elif rec.validated:
                scan = scan_input(rec.input_path, rec.endpoint, self.limits())
                rec.offsets, rec.custom_ids = scan.offsets, scan.custom_ids
                # Lines written after the last save are dropped and run again.
                self._truncate(self._partial(rec, "out"), rec.out_bytes)
                self._truncate(self._partial(rec, "err"), rec.err_bytes)

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        if path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(size)

    def close(self) -> None:
        """Save and remove the temporary directory, if any."""
        self._dirty = True
        self.flush()
        if self._tmp is not None:
            self._tmp.cleanup()

    def reset(self) -> None:
        """Forget every file, batch and logged request (the config and faults stay)."""
        for scan in self._scans.values():
            scan.cancel()
        self._scans.clear()
        self.files.clear()
        self.batches.clear()
        self.active.clear()
        self.requests.clear()
        self.fault_rng = random.Random(self.config.seed)
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.mark_dirty(now=True)

    # ---------------------------------------------------------------- config and faults
    def limits(self) -> Limits:
        """The input limits of the current config."""
        c = self.config
        return Limits(
            max_file_bytes=c.max_file_bytes,
            max_lines=c.max_lines,
            max_line_bytes=c.max_line_bytes,
            test_max_bytes=c.test_model_max_bytes,
            test_max_lines=c.test_model_max_lines,
            model_prefixes=tuple(c.known_model_prefixes),
        )

    def update_config(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply runtime changes (validated like the config itself).

        :param changes: field -> value.
        """
        merged = self.config.model_dump()
        merged.update(changes)
        new = EmulatorConfig.model_validate(merged)
        if new.seed != self.config.seed:
            self.fault_rng = random.Random(new.seed)
        self.config = new
        return new

    def set_faults(self, faults: dict[str, FaultSpec]) -> None:
        """Replace the fault table.

        :param faults: endpoint name (or ``*``) -> spec.
        """
        self.config = self.config.model_copy(update={"faults": dict(faults)})

    def draw_fault(self, endpoint: str) -> tuple[str | None, float, FaultSpec | None]:
        """Decide the fault and added latency of one request.

        :param endpoint: the endpoint name.
        :return: ``(fault kind or None, latency in seconds, spec used)``.
        """
        faults = self.config.faults
        specs = [s for s in (faults.get(endpoint), faults.get("*")) if s is not None]
        if not specs:
            return None, 0.0, None
        spec = specs[0]
        latency = spec.latency_ms / 1000.0
        if spec.latency_jitter_ms:
            latency += self.fault_rng.uniform(0.0, spec.latency_jitter_ms) / 1000.0
        for s in specs:
            if s.fail_next:
                return s.fail_next.pop(0), latency, s
        r = self.fault_rng.random()
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += float(getattr(spec, f"p_{kind}"))
            if r < edge:
                return kind, latency, spec
        return None, latency, spec

    # ---------------------------------------------------------------- files
    def add_file(
        self, file_id: str, filename: str, purpose: str, path: str, stats: tuple[int, int, int]
    ) -> StoredFile:
        """Register a file whose bytes are already at ``path``.

        :param file_id: its id.
        :param filename: its name.
        :param purpose: its purpose.
        :param path: where its bytes are.
        :param stats: ``(bytes, lines, longest line)``.
        """
        size, lines, longest = stats
        stored = StoredFile(file_id, filename, purpose, size, int(time.time()), path, lines, longest)
        self.files[file_id] = stored
        self.mark_dirty(now=True)
        return stored

    def get_file(self, file_id: str) -> StoredFile:
        """A file, or 404.

        :param file_id: its id.
        """
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(
                404, f"The file '{file_id}' does not exist.", code="file_not_found", param="file_id"
            )
        return stored

    def delete_file(self, file_id: str) -> None:
        """Delete a file; its bytes stay until no running batch reads them.

        :param file_id: its id.
        """
        stored = self.get_file(file_id)
        del self.files[file_id]
        self._doomed_paths.add(stored.path)
        self._unlink_unused()
        self.mark_dirty(now=True)

    def _unlink_unused(self) -> None:
        in_use = {self.batches[b].input_path for b in self.active}
        for path in list(self._doomed_paths):
            if path not in in_use:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._doomed_paths.discard(path)

    def list_files(
        self,
        *,
        after: str | None,
        limit: int,
        purpose: str | None,
        create_after: int | None,
        create_before: int | None,
    ) -> tuple[list[StoredFile], bool]:
        """A page of files, newest first.

        :param after: cursor (a file id).
        :param limit: page size.
        :param purpose: only this purpose.
        :param create_after: only created at or after (Unix seconds).
        :param create_before: only created at or before (Unix seconds).
        """
        ordered = list(reversed(self.files.values()))
        if after is not None:
            ids = [f.id for f in ordered]
            if after not in ids:
                raise ApiError(
                    400, f"The cursor '{after}' is not a known file id.", code="invalid_value", param="after"
                )
            ordered = ordered[ids.index(after) + 1 :]
        selected = [
            f
            for f in ordered
            if (purpose is None or f.purpose == purpose)
            and (create_after is None or f.created_at >= create_after)
            and (create_before is None or f.created_at <= create_before)
        ]
        return selected[:limit], len(selected) > limit

    # ---------------------------------------------------------------- batches
    def create_batch(
        self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, Any] | None
    ) -> BatchRecord:
        """Create a batch in ``validating`` (arguments already checked by the API layer).

        :param input_file_id: the uploaded input file.
        :param endpoint: the endpoint.
        :param completion_window: e.g. ``24h``.
        :param metadata: ``ds_name`` etc.
        """
        stored = self.files.get(input_file_id)
        if stored is None:
            raise ApiError(
                400,
                f"The input file '{input_file_id}' does not exist.",
                code="invalid_file",
                param="input_file_id",
            )
        now = time.time()
        rec = BatchRecord(
            id=f"batch_{uuid.uuid4()}",
            endpoint=endpoint,
            input_file_id=input_file_id,
            input_path=stored.path,
            completion_window=completion_window,
            window_seconds=parse_completion_window(completion_window).total_seconds(),
            metadata=metadata,
            status=BatchStatus.VALIDATING.value,
            created_wall=now,
            phase_wall=now,
            created_at=int(now),
            last_wall=now,
        )
        self.batches[rec.id] = rec
        self.active[rec.id] = None
        self.mark_dirty(now=True)
        return rec

    def get_batch(self, batch_id: str) -> BatchRecord:
        """A batch, or 404.

        :param batch_id: its id.
        """
        rec = self.batches.get(batch_id)
        if rec is None:
            raise ApiError(
                404, f"The batch '{batch_id}' does not exist.", code="batch_not_found", param="batch_id"
            )
        return rec

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Start cancelling; return the reply (with ``cancelling_at`` still null).

        A ``cancelling`` batch is returned unchanged; a terminal one gives 400
        ``invalid_batch_status``.

        :param batch_id: its id.
        """
        rec = self.get_batch(batch_id)
        status = BatchStatus(rec.status)
        if status is BatchStatus.CANCELLING:
            return rec.public()
        if status.is_terminal:
            raise ApiError(
                400,
                f"The batch '{batch_id}' is {status.value} and can no longer be cancelled.",
                code="invalid_batch_status",
                param="batch_id",
            )
        now = time.time()
        rec.status = BatchStatus.CANCELLING.value
        rec.cancel_wall = now
        rec.cancelling_at = int(now)
        scan = self._scans.pop(rec.id, None)
        if scan is not None:
            scan.cancel()
        self.mark_dirty(now=True)
        return rec.public()

    def list_batches(
        self,
        *,
        after: str | None,
        limit: int,
        ds_name: str | None,
        statuses: set[str] | None,
        input_file_ids: set[str] | None,
        create_after: int | None,
        create_before: int | None,
    ) -> tuple[list[BatchRecord], bool]:
        """A page of batches, newest first; ``after`` may be any batch id, as on the real service.

        :param after: cursor.
        :param limit: page size.
        :param ds_name: substring of ``metadata.ds_name``.
        :param statuses: only these statuses.
        :param input_file_ids: only these input files.
        :param create_after: only created at or after (Unix seconds).
        :param create_before: only created at or before (Unix seconds).
        """
        ordered = list(reversed(self.batches.values()))
        if after is not None:
            if after not in self.batches:
                raise ApiError(
                    400, f"The cursor '{after}' is not a known batch id.", code="invalid_value", param="after"
                )
            ordered = ordered[[b.id for b in ordered].index(after) + 1 :]

        def keep(b: BatchRecord) -> bool:
            if ds_name is not None:
                name = (b.metadata or {}).get("ds_name")
                if not isinstance(name, str) or ds_name not in name:
                    return False
            return (
                (statuses is None or b.status in statuses)
                and (input_file_ids is None or b.input_file_id in input_file_ids)
                and (create_after is None or b.created_at >= create_after)
                and (create_before is None or b.created_at <= create_before)
            )

        page: list[BatchRecord] = []
        has_more = False
        for b in ordered:
            if keep(b):
                if len(page) == limit:
                    has_more = True
                    break
                page.append(b)
        return page, has_more

    # ---------------------------------------------------------------- progress
    async def run_ticker(self) -> None:
        """Advance every in-flight batch forever, one pass per ``tick_interval``."""
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                await self.tick()
            except Exception:
                import logging

                logging.getLogger(__name__).exception("emulator tick failed")

    async def tick(self, now: float | None = None) -> None:
        """One pass over the in-flight batches.

        :param now: wall time to use (tests).
        """
        now = time.time() if now is None else now
        budget = self.config.max_lines_per_tick
        for i, batch_id in enumerate(list(self.active)):
            rec = self.batches.get(batch_id)
            if rec is None:
                self.active.pop(batch_id, None)
                continue
            budget -= self._advance(rec, now, budget)
            if i % 200 == 199:
                await asyncio.sleep(0)  # let requests in between large groups of batches
        # Rotate so that a capped budget does not always favour the same batches.
        if len(self.active) > 1 and budget <= 0:
            first = next(iter(self.active))
            self.active.pop(first)
            self.active[first] = None
        if self._dirty and time.monotonic() - self._last_flush >= _PERSIST_INTERVAL:
            self.flush()

    def _expired(self, rec: BatchRecord, now: float) -> bool:
        return (now - rec.created_wall) * self.config.time_scale >= rec.window_seconds

    def _advance(self, rec: BatchRecord, now: float, budget: int) -> int:
        status = rec.status
        used = 0
        if status == BatchStatus.VALIDATING.value:
            if self._expired(rec, now):
                self._finish(rec, BatchStatus.EXPIRED, now)
            elif now - rec.phase_wall >= self.config.validation_delay:
                self._validate(rec, now)
        elif status == BatchStatus.IN_PROGRESS.value:
            if self._expired(rec, now):
                self._finish(rec, BatchStatus.EXPIRED, now)
                return 0
            rec.progress = min(
                float(rec.total), rec.progress + self.config.lines_per_second * (now - rec.last_wall)
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
            self._dirty = True
        elif status == BatchStatus.FINALIZING.value:
            if now - rec.phase_wall >= self.config.finalize_delay:
                self._finish(rec, BatchStatus.COMPLETED, now)
        elif status == BatchStatus.CANCELLING.value:
            if rec.cancel_wall is None or now - rec.cancel_wall >= self.config.cancel_delay:
                self._finish(rec, BatchStatus.CANCELLED, now)
        else:
            self.active.pop(rec.id, None)
        return used

    def _validate(self, rec: BatchRecord, now: float) -> None:
        scan = self._scans.get(rec.id)
        if scan is None:
            loop = asyncio.get_running_loop()
            self._scans[rec.id] = loop.run_in_executor(
                None, scan_input, rec.input_path, rec.endpoint, self.limits()
            )
            return
        if not scan.done():
            return
        del self._scans[rec.id]
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
            self.active.pop(rec.id, None)
            self._unlink_unused()
        else:
            rec.validated = True
            rec.offsets, rec.custom_ids = result.offsets, result.custom_ids
            rec.total = len(result.offsets)
            rec.status = BatchStatus.IN_PROGRESS.value
            rec.in_progress_at = int(now)
            rec.last_wall = now
            rec.progress = 0.0
        self.mark_dirty()

    def _partial(self, rec: BatchRecord, kind: str) -> Path:
        return self.files_dir / f"{rec.id}.{kind}.partial"

    def _process(self, rec: BatchRecord, n: int, now: float) -> None:
        c = self.config
        out_lines: list[tuple[bytes, list[Any]]] = []
        err_lines: list[tuple[bytes, list[Any]]] = []
        start = rec.processed
        with open(rec.input_path, "rb") as fh:
            fh.seek(rec.offsets[start])
            for index in range(start, start + n):
                raw = fh.readline()
                request = json.loads(raw)
                cid = rec.custom_ids[index]
                outcome = line_outcome(c.seed, cid, c.line_error_rate, c.line_soft_error_rate)
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
        scan = self._scans.pop(rec.id, None)
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
            path = self.files_dir / file_id
            os.replace(partial, path)
            name = f"{rec.id}_{'success' if kind == 'out' else 'error'}.jsonl"
            lines = sum(1 for r in rec.results if r[4] == ("output" if kind == "out" else "error"))
            self.files[file_id] = StoredFile(
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
        self.active.pop(rec.id, None)
        # The offsets and ids are only needed while lines still run.
        rec.offsets, rec.custom_ids = [], []
        self._unlink_unused()
        self.mark_dirty()

    # ---------------------------------------------------------------- request log
    def log_request(self, entry: dict[str, Any]) -> None:
        """Append one request to the log (numbered from 1).

        :param entry: the fields of the entry.
        """
        self.request_seq += 1
        entry["seq"] = self.request_seq
        self.requests.append(entry)
