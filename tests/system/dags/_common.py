"""Shared settings of the system-test DAGs (the harness writes the input files before the stack starts)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

DATA = Path(os.environ.get("QWENBATCH_SYSTEM_DATA", "/nonexistent"))
# 2,000 chat lines: still running when a test aborts it (about a minute at the emulator's rate).
BIG = str(DATA / "big-0.jsonl")
BIG_FILES = [str(DATA / f"big-{i}.jsonl") for i in range(5)]
# A batch that completes within the test (about 40 s).
MEDIUM = str(DATA / "medium.jsonl")
START = datetime(2026, 1, 1)
DEFAULTS: dict[str, Any] = {"retries": 0}
# Seconds between status reads; the real service wants ~60, the emulator is fast.
POLL = 1.0


class PidRecordingSubmitOperator(SubmitBatchOperator):
    """SubmitBatchOperator that first writes the task process's PID, so a test can SIGKILL it."""

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        pid_file = DATA / f"pid-{ti.dag_id}-{ti.run_id}-{ti.task_id}-{ti.try_number}"
        pid_file.write_text(str(os.getpid()))
        return super().execute(context)
