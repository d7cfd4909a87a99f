"""The emulator's state: one object that holds the parts and the config, and the fault draw.

Where each behaviour lives:

- :mod:`.records`: a stored file and a batch, and their public JSON shapes;
- :mod:`.files`: the file store (uploads, results, delete, list);
- :mod:`.batches`: the batches (create, read, cancel, list);
- :mod:`.lifecycle`: the ticker that moves batches through their statuses and writes results;
- :mod:`.persistence`: ``state.json`` in the state directory;
- :mod:`.requestlog`: the request log of the admin API;
- :mod:`.callbacks`: ``ds_batch_finish_callback`` POSTs when a batch ends;
- this module: the config, runtime changes to it, and the fault draw per request.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.emulator.batches import BatchBook
from airflow_provider_qwenbatch.emulator.callbacks import CallbackSender
from airflow_provider_qwenbatch.emulator.config import FAULT_KINDS, EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.errors import ApiError, parse_list_time
from airflow_provider_qwenbatch.emulator.files import FileStore, copy_upload
from airflow_provider_qwenbatch.emulator.lifecycle import Lifecycle
from airflow_provider_qwenbatch.emulator.persistence import Persistence
from airflow_provider_qwenbatch.emulator.records import BatchRecord, StoredFile, new_hex
from airflow_provider_qwenbatch.emulator.requestlog import RequestLog
from airflow_provider_qwenbatch.emulator.validation import Limits

__all__ = [
    "ApiError",
    "BatchRecord",
    "EmulatorState",
    "StoredFile",
    "copy_upload",
    "new_hex",
    "parse_list_time",
]


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
        self.persistence = Persistence(self.root, self._tmp is None, self._snapshot)
        self.file_store = FileStore(self.root / "files", self.persistence.mark_dirty)
        self.book = BatchBook(self.file_store, self.persistence.mark_dirty)
        self.callbacks = CallbackSender(lambda: self.config.callback_timeout)
        self.lifecycle = Lifecycle(
            self.book,
            self.file_store,
            self.persistence,
            lambda: self.config,
            self.limits,
            on_end=self.callbacks.notify,
        )
        self.request_log = RequestLog(self.config.request_log_size)
        self.fault_rng = random.Random(self.config.seed)
        self.started_wall = time.time()
        if config.state_dir:
            self._load()

    # ---------------------------------------------------------------- persistence
    @property
    def persistent(self) -> bool:
        """Whether state survives a restart."""
        return self._tmp is None

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "files": [asdict(f) for f in self.file_store.files.values()],
            "batches": [b.to_json() for b in self.book.batches.values()],
        }

    def _load(self) -> None:
        data = self.persistence.read()
        if data is None:
            return
        for f in data.get("files", []):
            stored = StoredFile(**f)
            self.file_store.files[stored.id] = stored
        now = time.time()
        for b in data.get("batches", []):
            rec = BatchRecord.from_json(b)
            self.book.batches[rec.id] = rec
            if not BatchStatus(rec.status).is_terminal:
                self.lifecycle.resume(rec, now)

    def close(self) -> None:
        """Save and remove the temporary directory, if any."""
        self.persistence.mark_dirty(now=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def reset(self) -> None:
        """Forget every file, batch and logged request (the config and faults stay)."""
        self.book.clear()
        self.file_store.clear()
        self.request_log.clear()
        self.callbacks.clear()
        self.fault_rng = random.Random(self.config.seed)
        self.persistence.mark_dirty(now=True)

    # ---------------------------------------------------------------- operations across parts
    def delete_file(self, file_id: str) -> None:
        """Delete a file; its bytes stay until no running batch reads them.

        :param file_id: its id.
        """
        self.file_store.delete_file(file_id, self.book.paths_in_use())

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
            models=None if c.accept_any_model else frozenset(c.models),
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
