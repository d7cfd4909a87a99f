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


_NOTSET: Any = object()


class StubTI:
    """The few task-instance attributes the operators read, with XCom as Airflow 3.3 answers it.

    Not the class under test: a stand-in for ``RuntimeTaskInstance`` that checks what it is
    given. ``xcom_pull`` follows the real rules: without ``map_indexes`` it returns every map
    index's value of the task (a list as soon as there are two, the lone value when one), with
    ``map_indexes=i`` only map index ``i``'s. Sibling map indexes share one ``store``. Arguments
    the real method has but this stand-in does not model raise, rather than being ignored.
    """

    def __init__(
        self,
        dag_id: str = "dag",
        run_id: str = "run-1",
        task_id: str = "task",
        try_number: int = 1,
        *,
        map_index: int = -1,
        store: dict[tuple[str, int, str], Any] | None = None,
    ) -> None:
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = map_index
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}  # this task instance's own pushes, by key
        self.store: dict[tuple[str, int, str], Any] = {} if store is None else store

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom carries JSON only
        self.xcom[key] = value
        self.store[(self.task_id, self.map_index, key)] = value

    def xcom_pull(
        self,
        task_ids: str | None = None,
        dag_id: str | None = None,
        key: str = "return_value",
        include_prior_dates: bool = False,
        *,
        map_indexes: Any = _NOTSET,
        default: Any = None,
        run_id: str | None = None,
    ) -> Any:
        if dag_id not in (None, self.dag_id) or run_id not in (None, self.run_id) or include_prior_dates:
            raise NotImplementedError("StubTI pulls only from its own DAG run")
        if task_ids is not None and not isinstance(task_ids, str):
            raise NotImplementedError("StubTI pulls from one task id at a time")
        task_id = task_ids or self.task_id
        if map_indexes is _NOTSET:
            values = [v for (t, _, k), v in sorted(self.store.items()) if t == task_id and k == key]
            if not values:
                return default
            return values[0] if len(values) == 1 else values
        if not isinstance(map_indexes, int):
            raise NotImplementedError("StubTI takes one map index at a time")
        return self.store.get((task_id, map_indexes, key), default)


def context_for(ti: StubTI) -> dict[str, Any]:
    """A minimal execution context around a stub task instance."""
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}
