"""Helpers of the integration tests: create real batches on the emulator through the real client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle


def chat_requests(n: int, model: str = "qwen-flash") -> list[dict[str, Any]]:
    """``n`` small chat requests."""
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(n)
    ]


def create_batch(
    emulator: EmulatorHandle, tmp: Path, lines: int = 5, *, rows: list[dict[str, Any]] | None = None
) -> Batch:
    """Upload a JSONL file and create a chat batch on the emulator."""
    path = tmp / f"input-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rows or chat_requests(lines))) + "\n")
    with BatchClient(emulator.api_key, emulator.base_url) as client:
        uploaded = client.upload_file(path)
        return client.create_batch(uploaded.id, "/v1/chat/completions")


def status_of(emulator: EmulatorHandle, batch_id: str) -> str:
    """The batch's status as the emulator holds it."""
    return str(emulator.batch_state(batch_id)["batch"]["status"])


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class StubTI:
    """The few task-instance attributes the operators read; XCom kept in a dict."""

    def __init__(
        self, dag_id: str = "dag", run_id: str = "run-1", task_id: str = "task", try_number: int = 1
    ) -> None:
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = -1
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcom.get(key)


def context_for(ti: StubTI) -> dict[str, Any]:
    """A minimal execution context around a stub task instance."""
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}
