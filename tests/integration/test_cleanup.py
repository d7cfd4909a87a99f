"""Failure clean-up: callback and listener cancel exactly the failed run's in-flight batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_qwenbatch import listener
from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure, make_cancel_batches_on_failure
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.integration.conftest import conn_json
from tests.integration.helpers import StubTI, chat_requests, context_for, status_of, wait_until

pytestmark = pytest.mark.integration


def _start(run_id: str, task_id: str, lines: int = 1000) -> str:
    op = SubmitBatchOperator(task_id=task_id, requests=chat_requests(lines), wait_for_completion=False)
    return str(op.execute(context_for(StubTI(dag_id="etl", run_id=run_id, task_id=task_id)))["batch_id"])


@pytest.fixture
def two_runs(emulator: EmulatorHandle) -> dict[str, str]:
    emulator.set_config(lines_per_second=10.0)
    return {
        "failed_a": _start("run-failed", "a"),
        "failed_b": _start("run-failed", "b"),
        "other_run": _start("run-ok", "a"),
    }


def test_failure_callback_cancels_only_the_failed_runs_batches(
    emulator: EmulatorHandle, two_runs: dict[str, str]
) -> None:
    context = {"dag": SimpleNamespace(dag_id="etl"), "run_id": "run-failed"}
    cancel_batches_on_failure(context)
    cancelled = {r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")}
    assert cancelled == {two_runs["failed_a"], two_runs["failed_b"]}
    assert status_of(emulator, two_runs["other_run"]) in ("validating", "in_progress")


def test_callback_never_raises_even_when_the_api_is_down(
    emulator: EmulatorHandle, two_runs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_DOWN", conn_json(emulator).replace(emulator.base_url, "http://127.0.0.1:9")
    )
    make_cancel_batches_on_failure("qwen_down")(
        {"dag": SimpleNamespace(dag_id="etl"), "run_id": "run-failed"}
    )
    assert emulator.requests(endpoint="cancel_batch") == []


def test_listener_cancels_in_the_background(emulator: EmulatorHandle, two_runs: dict[str, str]) -> None:
    listener.on_dag_run_failed(SimpleNamespace(dag_id="etl", run_id="run-failed"), "marked failed")
    listener.wait_for_cleanups()
    wait_until(
        lambda: (
            {r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")}
            == {two_runs["failed_a"], two_runs["failed_b"]}
        ),
        what="both batches of the failed run cancelled",
    )


def test_listener_can_be_switched_off(
    emulator: EmulatorHandle, two_runs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    listener.on_dag_run_failed(SimpleNamespace(dag_id="etl", run_id="run-failed"), "marked failed")
    listener.wait_for_cleanups()
    assert emulator.requests(endpoint="cancel_batch") == []


def test_hook_test_connection_really_calls_the_api(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = QwenBatchHook().test_connection()
    assert ok, message
    assert emulator.requests(endpoint="list_batches")
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_BAD", conn_json(emulator).replace(emulator.api_key, "sk-wrong-key-0")
    )
    ok, message = QwenBatchHook("qwen_bad").test_connection()
    assert not ok
    assert "HTTP 401" in message
    assert "x-request-id=" in message
    assert "sk-wrong-key-0" not in message
