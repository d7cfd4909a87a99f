"""Pieces the benchmarks share: the emulator subprocess, Connections, input rows, a stub task instance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle

API_KEY = "sk-bench-0001"


def set_connections(handle: EmulatorHandle, **extra: Any) -> None:
    """The default ``qwen_batch`` and ``openai`` Connections, both pointing at the emulator."""
    os.environ["AIRFLOW_CONN_QWEN_BATCH_DEFAULT"] = json.dumps(
        {"conn_type": "qwen_batch", "password": handle.api_key, "host": handle.base_url, "extra": extra}
    )
    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = json.dumps(
        {"conn_type": "openai", "password": handle.api_key, "host": handle.base_url}
    )


def chat_rows(n: int, prefix: str = "r", pad: int = 0) -> list[dict[str, Any]]:
    filler = "x" * pad
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "qwen-flash", "messages": [{"role": "user", "content": f"q{i} {filler}"}]},
        }
        for i in range(n)
    ]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    return path


class StubTI:
    """The task-instance fields and XCom calls the operators use."""

    def __init__(self, dag_id: str, run_id: str, task_id: str) -> None:
        self.dag_id, self.run_id, self.task_id = dag_id, run_id, task_id
        self.map_index = -1
        self.try_number = 1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcom.get(key)
