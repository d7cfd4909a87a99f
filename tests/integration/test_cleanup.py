"""Failure clean-up: callback and listener cancel exactly the failed run's in-flight batches."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_qwenbatch.cleanup import listener
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


# ---- the listener acts only for runs that used the provider (real DagRuns from dag.test()) ----


DAGS = Path(__file__).parent / "dags"


@pytest.fixture
def failing_dags(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The DAGs of ``tests/integration/dags/cleanup_listener_dags.py``, as ``dag.test()`` syncs them."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    # dag.test() serializes the DAG from the dags-folder bundle, whose path is read from here.
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(DAGS))
    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def _provider_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("airflow_provider_qwenbatch") and r.levelno >= level]


def test_listener_makes_no_api_call_for_a_run_that_never_used_the_provider(
    failing_dags: dict[str, Any], emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="airflow_provider_qwenbatch")
    dr = failing_dags["cleanup_no_provider"].test()
    listener.wait_for_cleanups()
    assert str(dr.state) == "failed"
    # The listener did run for this failed run (in this process) ...
    assert any(dr.run_id in r.getMessage() for r in _provider_records(caplog, logging.DEBUG)), caplog.text
    # ... and spent nothing of the account's list quota on it.
    assert emulator.requests(endpoint="list_batches") == []


def test_listener_logs_no_error_for_a_run_that_never_used_the_provider_without_connection(
    failing_dags: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_QWEN_BATCH_DEFAULT", raising=False)
    caplog.set_level(logging.DEBUG, logger="airflow_provider_qwenbatch")
    dr = failing_dags["cleanup_no_provider_no_conn"].test()
    listener.wait_for_cleanups()
    assert str(dr.state) == "failed"
    assert any(dr.run_id in r.getMessage() for r in _provider_records(caplog, logging.DEBUG)), caplog.text
    assert _provider_records(caplog, logging.WARNING) == [], caplog.text


def test_listener_cancels_the_batch_of_a_real_failed_run(
    failing_dags: dict[str, Any], emulator: EmulatorHandle
) -> None:
    emulator.set_config(lines_per_second=10.0)
    dr = failing_dags["cleanup_with_provider"].test()
    listener.wait_for_cleanups()
    assert str(dr.state) == "failed"
    (batch,) = [b["batch"] for b in emulator.batches(lines=False)]
    assert [r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")] == [batch["id"]]
    assert status_of(emulator, batch["id"]) in ("cancelling", "cancelled")
