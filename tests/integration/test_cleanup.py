"""Failure clean-up: callback and listener cancel exactly the failed run's in-flight batches."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure, make_cancel_batches_on_failure
from airflow_provider_qwenbatch.cleanup import listener
from airflow_provider_qwenbatch.client.errors import QwenBatchConnectionError
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.integration.conftest import conn_json
from tests.integration.helpers import StubTI, chat_requests, context_for, status_of

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


def test_callback_never_raises_and_says_so_when_the_api_is_down(
    emulator: EmulatorHandle,
    two_runs: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_qwenbatch")
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_DOWN", conn_json(emulator).replace(emulator.base_url, "http://127.0.0.1:9")
    )
    context = {"dag": SimpleNamespace(dag_id="etl"), "run_id": "run-failed"}
    make_cancel_batches_on_failure("qwen_down")(context)  # must not raise: it would hide the failure
    # It used the Connection it was given (the default one reaches the emulator) ...
    assert emulator.requests(endpoint="list_batches") == []
    # ... and says, with the cause, that the run's batches may still be running.
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("airflow_provider")
    ]
    assert len(errors) == 1, caplog.text
    assert "may still be running" in errors[0].getMessage()
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], QwenBatchConnectionError)
    assert status_of(emulator, two_runs["failed_a"]) in ("validating", "in_progress")
    # Once the API answers again, the same callback cancels them.
    make_cancel_batches_on_failure()(context)
    cancelled = {r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")}
    assert cancelled == {two_runs["failed_a"], two_runs["failed_b"]}


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

    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()

    # dag.test() serializes the DAG from the dags-folder bundle, whose path is read from here.
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(DAGS))
    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def _provider_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("airflow_provider_qwenbatch") and r.levelno >= level
    ]


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


def test_listener_can_be_switched_off(
    failing_dags: dict[str, Any], emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.set_config(lines_per_second=10.0)
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    dr = failing_dags["cleanup_with_provider"].test()
    listener.wait_for_cleanups()
    assert str(dr.state) == "failed"
    (batch,) = [b["batch"] for b in emulator.batches(lines=False)]
    assert emulator.requests(endpoint="list_batches") == []
    assert emulator.requests(endpoint="cancel_batch") == []
    assert status_of(emulator, batch["id"]) in ("validating", "in_progress")


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


def test_listener_after_the_callback_sends_no_second_cancel_nor_read(
    failing_dags: dict[str, Any], emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real failed run whose batch is still running (the listener off while it fails) ...
    emulator.set_config(lines_per_second=10.0, cancel_delay=60.0)  # stays "cancelling" meanwhile
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    dr = failing_dags["cleanup_with_provider"].test()
    listener.wait_for_cleanups()
    (batch,) = [b["batch"] for b in emulator.batches(lines=False)]
    assert emulator.requests(endpoint="cancel_batch") == []
    # ... then both clean-up paths, the callback first as when a task fails the run.
    cancel_batches_on_failure({"dag_run": dr, "run_id": dr.run_id})
    assert len(emulator.requests(endpoint="cancel_batch")) == 1
    seen = emulator.requests()[-1]["seq"]
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "True")
    listener.on_dag_run_failed(dr, "marked failed")
    listener.wait_for_cleanups()
    # The listener's pass is one list request that finds the batch already cancelling.
    assert [r["endpoint"] for r in emulator.requests(since=seen)] == ["list_batches"]
    assert status_of(emulator, batch["id"]) == "cancelling"


def test_listener_acts_for_a_submit_task_that_started_even_without_a_batch_id(
    failing_dags: dict[str, Any], emulator: EmulatorHandle
) -> None:
    # Evidence without the XCom: a started SubmitBatchOperator task (it may have died between
    # creating its batch and pushing the id). Here it failed before creating one.
    dr = failing_dags["cleanup_submit_fails_early"].test()
    listener.wait_for_cleanups()
    assert str(dr.state) == "failed"
    assert emulator.requests(endpoint="create_batch") == []
    assert len(emulator.requests(endpoint="list_batches")) == 1


def test_listener_looks_on_the_server_when_the_metadata_db_cannot_be_read(
    emulator: EmulatorHandle,
    two_runs: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not knowing whether the run used the provider must not leave its batches running.
    from sqlalchemy.exc import OperationalError

    from airflow_provider_qwenbatch.cleanup import usage

    def unreadable(dag_id: str, run_id: str) -> str | None:
        assert (dag_id, run_id) == ("etl", "run-failed")
        raise OperationalError("SELECT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(usage, "run_batch_evidence", unreadable)
    caplog.set_level(logging.INFO, logger="airflow_provider_qwenbatch")
    listener.on_dag_run_failed(SimpleNamespace(dag_id="etl", run_id="run-failed"), "marked failed")
    listener.wait_for_cleanups()
    cancelled = {r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")}
    assert cancelled == {two_runs["failed_a"], two_runs["failed_b"]}
    assert any("metadata DB" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_failure_callback_cancels_every_shard_of_a_split_input(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=0.5)  # 20 s a shard: all 4 still running at the callback
    op = SubmitBatchOperator(
        task_id="big", requests=chat_requests(40), max_lines_per_batch=10, wait_for_completion=False
    )
    shards = op.execute(context_for(StubTI(dag_id="etl", run_id="run-sharded", task_id="big")))["batch_ids"]
    other = _start("run-ok", "a", lines=100)
    assert len(shards) == 4
    cancel_batches_on_failure({"dag": SimpleNamespace(dag_id="etl"), "run_id": "run-sharded"})
    cancelled = {r["batch_id"] for r in emulator.requests(endpoint="cancel_batch")}
    assert cancelled == set(shards)
    assert status_of(emulator, other) in ("validating", "in_progress")
