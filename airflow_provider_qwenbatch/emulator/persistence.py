"""Persistence: ``state.json`` in the state directory, written atomically and not too often.

API mutations are written at once (a client that got an answer finds it after a crash);
progress made by the ticker is written at most every :data:`PERSIST_INTERVAL` seconds. What
is rebuilt after a restart (line offsets, the partial result files) is the lifecycle's job,
see :meth:`~airflow_provider_qwenbatch.emulator.lifecycle.Lifecycle.resume`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
PERSIST_INTERVAL = 0.2
"""Seconds between two writes of progress made by the ticker."""


class Persistence:
    """Writes what ``snapshot`` returns to ``root/state.json`` when something changed.

    :param root: the state directory.
    :param enabled: whether anything is written (``False`` for a temporary directory).
    :param snapshot: returns the JSON-able state to write.
    """

    def __init__(self, root: Path, enabled: bool, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.root = root
        self.enabled = enabled
        self._snapshot = snapshot
        self.dirty = False
        self._last_flush = 0.0

    def mark_dirty(self, *, now: bool = False) -> None:
        """Note a change; with ``now``, write it at once (API mutations), else on the next tick.

        :param now: write immediately.
        """
        self.dirty = True
        if now:
            self.flush()

    def flush(self) -> None:
        """Write ``state.json`` atomically if anything changed."""
        if not self.dirty or not self.enabled:
            self.dirty = False
            return
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self._snapshot(), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.root / STATE_FILE)
        self.dirty = False
        self._last_flush = time.monotonic()

    def flush_if_due(self) -> None:
        """Write pending changes if the last write is :data:`PERSIST_INTERVAL` old."""
        if self.dirty and time.monotonic() - self._last_flush >= PERSIST_INTERVAL:
            self.flush()

    def read(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is none."""
        path = self.root / STATE_FILE
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
