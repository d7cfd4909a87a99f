"""Shared pieces of the hardening tests: a stub task instance, Airflow-style task retries, request rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_qwenbatch.compat import AirflowFailException
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from tests.integration.helpers import StubTI as _CheckedStubTI


class StubTI(_CheckedStubTI):
    """The integration tests' checked stand-in for ``RuntimeTaskInstance`` (XCom as Airflow answers it)."""

    def __init__(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1):
        super().__init__(dag_id, run_id, task_id, try_number, map_index=map_index)


def context(ti: StubTI) -> dict[str, Any]:
    return {"ti": ti}


def conn_json(handle: EmulatorHandle, api_key: str | None = None, **extra: Any) -> str:
    """The ``qwen_batch`` Connection of an emulator, as Airflow reads it from an env var."""
    return json.dumps(
        {
            "conn_type": "qwen_batch",
            "password": handle.api_key if api_key is None else api_key,
            "host": handle.base_url,
            "extra": extra,
        }
    )


def chat_rows(n: int, prefix: str = "req", model: str = "qwen-flash") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def with_task_retries(attempt: Callable[[int], Any], retries: int) -> tuple[Any, list[BaseException]]:
    """Run ``attempt(try_number)`` like Airflow runs a task with ``retries``.

    An ``AirflowFailException`` ends the task at once (as in Airflow); any other error starts the
    next try. Returns the result (or the last error) and every error seen.
    """
    errors: list[BaseException] = []
    for try_number in range(1, retries + 2):
        try:
            return attempt(try_number), errors
        except AirflowFailException as exc:
            errors.append(exc)
            return exc, errors
        except Exception as exc:
            errors.append(exc)
    return errors[-1], errors
