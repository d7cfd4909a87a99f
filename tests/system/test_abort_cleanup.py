"""Abort and failure clean-up, proven on a real Airflow stack against the emulator.

What a user relies on: when a DAG run is aborted or fails, no batch it started keeps running
(and a triggerer restart or a worker crash does not cancel, nor duplicate, a batch). Each
scenario drives Airflow through its REST API and reads the truth from the emulator: the
cancel request in its request log, and the batch's final status. The seconds from the abort
to the cancel request's arrival are recorded for the summary.

Scenarios run in file order on one shared stack; the listener scenario (5) is last because it
restarts the api-server with the listener switched on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import psutil
import pytest

from tests.system.conftest import REPEAT, System
from tests.system.stack import poll

pytestmark = pytest.mark.system

# Bounded waits (2 cores: a task process needs several seconds to start).
START_TIMEOUT = 120.0  # from triggering a run to its batch running in the emulator
CANCEL_REQUEST_TIMEOUT = 40.0  # from the abort to the cancel request (a 2,000-line batch runs ~67 s)
CANCELLED_TIMEOUT = 30.0  # from the cancel request to `cancelled`
STATE_TIMEOUT = 120.0
REPEATED = pytest.mark.parametrize("attempt", range(REPEAT))


def _wait_polled(system: System, batch_id: str, timeout: float = 60.0) -> None:
    """Wait until someone (the waiting task) has read the batch at least once."""
    poll(f"a status read of batch {batch_id}", lambda: system.emu.polls(batch_id), timeout, 0.25)


def _expect_cancelled(system: System, batch_id: str, aborted_at: float, record: dict[str, Any]) -> float:
    """Assert that the batch receives a cancel request and ends ``cancelled``; returns abort-to-cancel seconds."""
    entry = system.emu.wait_cancel_request(batch_id, CANCEL_REQUEST_TIMEOUT)
    delay = float(entry["wall"]) - aborted_at
    batch = system.emu.wait_status(batch_id, "cancelled", CANCELLED_TIMEOUT)
    assert batch["request_counts"]["completed"] < batch["request_counts"]["total"], "the batch finished first"
    record["abort_to_cancel_s"].append(delay)
    return delay


def _assert_log_says(
    system: System, dag_id: str, run_id: str, task_id: str, text: str, map_index: int = -1
) -> None:
    """The task's own log (worker or triggerer part) names what happened; logs are flushed asynchronously."""
    poll(
        f"{text!r} in the log of {task_id}[{map_index}]",
        lambda: text in system.stack.task_log_text(dag_id, run_id, task_id, map_index),
        30.0,
        0.5,
        on_timeout=lambda: system.stack.task_log_text(dag_id, run_id, task_id, map_index)[-3000:],
    )


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ---- 1 ------------------------------------------------------------------------------------


@REPEATED
def test_s01_worker_wait_run_marked_failed(system: System, record: dict[str, Any], attempt: int) -> None:
    """Submit task waiting in the worker; run marked failed -> the operator's on_kill cancels."""
    record["scenario"] = "01 worker wait, run failed (operator on_kill)"
    dag_id, run_id = "sys_s01_worker_wait", system.new_run_id("s01")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "submit", ["running"], STATE_TIMEOUT)
    _wait_polled(system, batch["id"])

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    _expect_cancelled(system, batch["id"], aborted_at, record)

    _assert_log_says(system, dag_id, run_id, "submit", f"Cancel batch {batch['id']}: cancel_requested")
    assert len(system.emu.run_batches(dag_id, run_id)) == 1


# ---- 2 ------------------------------------------------------------------------------------


def _start_deferred(system: System, scenario: str) -> tuple[str, str, dict[str, Any]]:
    dag_id, run_id = "sys_s02_deferred", system.new_run_id(scenario)
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "submit", ["deferred"], STATE_TIMEOUT)
    _wait_polled(system, batch["id"])  # the trigger runs (and holds its client)
    return dag_id, run_id, batch


@REPEATED
def test_s02_deferred_run_marked_failed(system: System, record: dict[str, Any], attempt: int) -> None:
    """Submit task deferred; run marked failed -> the trigger's on_kill cancels."""
    record["scenario"] = "02 deferred, run failed (trigger on_kill)"
    dag_id, run_id, batch = _start_deferred(system, "s02")

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    _expect_cancelled(system, batch["id"], aborted_at, record)

    _assert_log_says(system, dag_id, run_id, "submit", f"Cancel batch {batch['id']}: cancel_requested")


# ---- 3 ------------------------------------------------------------------------------------


@REPEATED
def test_s03_deferred_task_marked_failed(system: System, record: dict[str, Any], attempt: int) -> None:
    """Submit task deferred; only that task marked failed -> the trigger's on_kill cancels."""
    record["scenario"] = "03 deferred, task failed (trigger on_kill)"
    dag_id, run_id, batch = _start_deferred(system, "s03")

    aborted_at = time.time()
    system.api.mark_task_failed(dag_id, run_id, "submit")
    _expect_cancelled(system, batch["id"], aborted_at, record)

    _assert_log_says(system, dag_id, run_id, "submit", f"Cancel batch {batch['id']}: cancel_requested")
    assert system.api.task_instance(dag_id, run_id, "submit")["state"] == "failed"  # type: ignore[index]


# ---- 4 ------------------------------------------------------------------------------------


@REPEATED
def test_s04_sensor_poke_run_marked_failed(system: System, record: dict[str, Any], attempt: int) -> None:
    """BatchStatusSensor poking an upstream task's batch; run marked failed -> the sensor's on_kill cancels."""
    record["scenario"] = "04 sensor poke, run failed (sensor on_kill)"
    dag_id, run_id = "sys_s04_sensor_poke", system.new_run_id("s04")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "submit", ["success"], STATE_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "wait", ["running"], STATE_TIMEOUT)
    _wait_polled(system, batch["id"])  # the submit task does not read it: this is the sensor's first poke

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    _expect_cancelled(system, batch["id"], aborted_at, record)

    _assert_log_says(system, dag_id, run_id, "wait", f"Cancel batch {batch['id']}: cancel_requested")


# ---- 6 ------------------------------------------------------------------------------------


@REPEATED
def test_s06_other_task_raises_dag_callback(system: System, record: dict[str, Any], attempt: int) -> None:
    """A later task raises; the DAG's on_failure_callback cancels the run's in-flight batch."""
    record["scenario"] = "06 other task raises (DAG on_failure_callback)"
    dag_id, run_id = "sys_s06_callback", system.new_run_id("s06")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    failed = system.api.wait_task_state(dag_id, run_id, "fails", ["failed"], STATE_TIMEOUT)
    system.api.wait_run_state(dag_id, run_id, ["failed"], STATE_TIMEOUT)

    # The abort is the moment the failing task ended.
    _expect_cancelled(system, batch["id"], _iso(failed["end_date"]), record)


# ---- 7 ------------------------------------------------------------------------------------


def test_s07_operator_timeout(system: System, record: dict[str, Any]) -> None:
    """The operator's timeout passes, in the worker and in the triggerer -> cancelled, task failed, clear message."""
    record["scenario"] = "07 operator timeout (worker + triggerer)"
    dag_id, run_id = "sys_s07_timeout", system.new_run_id("s07")
    timeout = 6  # as in the DAG
    system.api.trigger(dag_id, run_id)
    any_status = ("validating", "in_progress", "cancelling", "cancelled", "finalizing", "completed")
    batches = system.emu.wait_run_batches(dag_id, run_id, 2, START_TIMEOUT, any_status)
    for task_id in ("submit_worker", "submit_deferred"):
        ti = system.api.wait_task_state(dag_id, run_id, task_id, ["failed"], STATE_TIMEOUT)
        assert ti["try_number"] == 1
    for batch in batches:
        # The deadline counts from the batch's created_at, as the operator computes it.
        _expect_cancelled(system, batch["id"], float(batch["created_at"]) + timeout, record)
    _assert_log_says(
        system, dag_id, run_id, "submit_worker", f"after the timeout of {timeout}s; cancel: cancel_requested"
    )
    _assert_log_says(
        system,
        dag_id,
        run_id,
        "submit_deferred",
        f"after the timeout of {timeout}s; cancel: cancel_requested",
    )
    _assert_log_says(system, dag_id, run_id, "submit_deferred", "BatchTimeoutError")


# ---- 7b -----------------------------------------------------------------------------------


def test_s07b_execution_timeout(system: System, record: dict[str, Any]) -> None:
    """Airflow's execution_timeout passes, in the worker and while deferred -> cancelled, task failed."""
    record["scenario"] = "07b execution_timeout (worker + deferred)"
    dag_id, run_id = "sys_s07b_execution_timeout", system.new_run_id("s07b")
    timeout = 10  # as in the DAG
    system.api.trigger(dag_id, run_id)
    any_status = ("validating", "in_progress", "cancelling", "cancelled", "finalizing", "completed")
    system.emu.wait_run_batches(dag_id, run_id, 2, START_TIMEOUT, any_status)
    for task_id in ("submit_worker", "submit_deferred"):
        batch = system.emu.task_batch(dag_id, run_id, task_id)
        # The timeout counts from execute(), which creates the batch within a second.
        _expect_cancelled(system, batch["id"], float(batch["created_at"]) + timeout, record)
        system.api.wait_task_state(dag_id, run_id, task_id, ["failed"], STATE_TIMEOUT)
    _assert_log_says(system, dag_id, run_id, "submit_worker", "AirflowTaskTimeout")
    _assert_log_says(system, dag_id, run_id, "submit_deferred", "TaskDeferralTimeout")


# ---- 8 ------------------------------------------------------------------------------------


def test_s08_triggerer_restart_does_not_cancel(system: System, record: dict[str, Any]) -> None:
    """The triggerer restarts (SIGTERM, start again) while the task is deferred -> NOT cancelled; it completes."""
    record["scenario"] = "08 triggerer restart (must NOT cancel)"
    dag_id, run_id = "sys_s08_triggerer_restart", system.new_run_id("s08")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "submit", ["deferred"], STATE_TIMEOUT)
    _wait_polled(system, batch["id"])

    triggerer = system.stack.components["triggerer"]
    stopped_at = time.monotonic()
    triggerer.stop()
    record["triggerer_stop_s"] = round(time.monotonic() - stopped_at, 1)
    # The test is only meaningful if the batch was still running when the trigger was cancelled.
    assert system.emu.status(batch["id"]) == "in_progress", "the batch ended before the triggerer stopped"
    triggerer.start()

    system.api.wait_task_state(dag_id, run_id, "submit", ["success"], STATE_TIMEOUT)
    record["note"] = f"not cancelled; completed; triggerer down {record['triggerer_stop_s']}s"
    assert system.emu.status(batch["id"]) == "completed"
    assert system.emu.cancel_requests(batch["id"]) == []
    assert len(system.emu.run_batches(dag_id, run_id)) == 1


# ---- 9 ------------------------------------------------------------------------------------


def test_s09_worker_sigkill_retry_reattaches(system: System, record: dict[str, Any]) -> None:
    """The task process is SIGKILLed while waiting; the retry re-attaches: exactly one batch is created."""
    record["scenario"] = "09 worker SIGKILL, retry re-attaches"
    dag_id, run_id = "sys_s09_worker_sigkill", system.new_run_id("s09")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    _wait_polled(system, batch["id"])
    pid_file = system.data / f"pid-{dag_id}-{run_id}-submit-1"
    pid = int(poll("the task's PID file", lambda: pid_file.exists() and pid_file.read_text().strip(), 30.0))
    # Only ever a process of the stack: a descendant of the scheduler (LocalExecutor worker -> supervisor -> task).
    assert system.stack.components["scheduler"].pid in [p.pid for p in psutil.Process(pid).parents()]
    os.kill(pid, signal.SIGKILL)

    ti = system.api.wait_task_state(dag_id, run_id, "submit", ["success"], STATE_TIMEOUT)
    assert ti["try_number"] == 2
    batches = system.emu.run_batches(dag_id, run_id)
    assert [b["id"] for b in batches] == [batch["id"]]
    assert len(system.emu.creates({batch["id"]})) == 1
    assert system.emu.status(batch["id"]) == "completed"
    assert system.emu.cancel_requests(batch["id"]) == []
    _assert_log_says(system, dag_id, run_id, "submit", f"re-attaches to batch {batch['id']}")
    record["note"] = "1 batch created; try 2 re-attached and succeeded"


# ---- 10 -----------------------------------------------------------------------------------


@REPEATED
def test_s10_slow_cancel_deferred_run_marked_failed(
    system: System, record: dict[str, Any], attempt: int
) -> None:
    """The emulator answers cancel after 2 s while a deferred task is aborted -> still cancelled."""
    record["scenario"] = "10 deferred, slow cancel (2 s latency)"
    dag_id, run_id, batch = _start_deferred(system, "s10")
    system.handle.set_faults({"cancel_batch": {"latency_ms": 2000}})
    try:
        aborted_at = time.time()
        system.api.mark_run_failed(dag_id, run_id)
        _expect_cancelled(system, batch["id"], aborted_at, record)
    finally:
        system.handle.clear_faults()
    # The answer arrives 2 s later, after the triggerer re-cancelled on_kill and closed the task's log
    # stream: the shielded request still finishes, and its outcome is logged by the triggerer itself.
    line = f"Cancel batch {batch['id']}: cancel_requested"
    triggerer_log = system.stack.components["triggerer"].log_path
    poll(
        f"{line!r} in the task log or the triggerer's output",
        lambda: (
            line in system.stack.task_log_text(dag_id, run_id, "submit") or line in triggerer_log.read_text()
        ),
        30.0,
        0.5,
    )


# ---- 11 -----------------------------------------------------------------------------------


def test_s11_mapped_run_marked_failed(system: System, record: dict[str, Any]) -> None:
    """A mapped submit task (5 deferred batches); run marked failed -> all 5 cancelled."""
    record["scenario"] = "11 mapped x5 deferred, run failed"
    dag_id, run_id = "sys_s11_mapped", system.new_run_id("s11")
    system.api.trigger(dag_id, run_id)
    batches = system.emu.wait_run_batches(dag_id, run_id, 5, START_TIMEOUT)
    for i in range(5):
        system.api.wait_task_state(dag_id, run_id, "submit", ["deferred"], STATE_TIMEOUT, map_index=i)
    for batch in batches:
        _wait_polled(system, batch["id"])

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    for batch in batches:
        _expect_cancelled(system, batch["id"], aborted_at, record)
    assert len(system.emu.run_batches(dag_id, run_id)) == 5


# ---- 5 (last: switches the listener on) ----------------------------------------------------


def test_s05a_listener_registered_with_default_settings(system: System, record: dict[str, Any]) -> None:
    """With default settings, an Airflow process (as the api-server) has the clean-up listener registered."""
    record["scenario"] = "05a listener registered by default"
    env = dict(system.stack.env, AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED="True")
    code = (
        "from airflow.listeners.listener import get_listener_manager\n"
        "print('LISTENERS', [getattr(p, '__name__', '') for p in get_listener_manager().pm.get_plugins()])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    record["note"] = (
        "registered" if "airflow_provider_qwenbatch.cleanup.listener" in out else "NOT registered"
    )
    # Airflow 3.3 loads a provider-info 'plugins' entry only with [core] lazy_discover_providers=False;
    # the package's airflow.plugins entry point loads it by default (reinstall the package after changing it).
    assert "airflow_provider_qwenbatch.cleanup.listener" in out, out[-2000:]


def test_s05_sensor_reschedule_run_marked_failed_listener(system: System, record: dict[str, Any]) -> None:
    """Sensor in reschedule mode, between pokes (no process); run marked failed -> the listener plugin cancels."""
    record["scenario"] = "05 sensor reschedule, run failed (listener)"
    # Default settings: the listener is on, and the plugin loads through its entry point.
    env = {"AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED": "True"}
    record["api_server_restart_s"] = round(system.stack.restart("api-server", env), 1)
    poll("the api-server to answer", system.api.ping, 120.0, 0.5)
    system.api.client.get("/execution/health")
    dag_id, run_id = "sys_s05_sensor_reschedule", system.new_run_id("s05")
    system.api.trigger(dag_id, run_id)
    (batch,) = system.emu.wait_run_batches(dag_id, run_id, 1, START_TIMEOUT)
    system.api.wait_task_state(dag_id, run_id, "wait", ["up_for_reschedule"], STATE_TIMEOUT)

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    _expect_cancelled(system, batch["id"], aborted_at, record)
    # The clean-up ran in the api-server (the listener), not in a task.
    line = f"Cancel batch {batch['id']}: cancel_requested"
    assert line in system.stack.components["api-server"].log_path.read_text()
