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
import time
from datetime import datetime
from typing import Any

import pytest

from tests.system.conftest import System
from tests.system.stack import poll

pytestmark = pytest.mark.system

# Bounded waits (2 cores: a task process needs several seconds to start).
START_TIMEOUT = 120.0  # from triggering a run to its batch running in the emulator
CANCEL_REQUEST_TIMEOUT = 40.0  # from the abort to the cancel request (a 2,000-line batch runs ~67 s)
CANCELLED_TIMEOUT = 30.0  # from the cancel request to `cancelled`
STATE_TIMEOUT = 120.0


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


def test_s01_worker_wait_run_marked_failed(system: System, record: dict[str, Any]) -> None:
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


def test_s02_deferred_run_marked_failed(system: System, record: dict[str, Any]) -> None:
    """Submit task deferred; run marked failed -> the trigger's on_kill cancels."""
    record["scenario"] = "02 deferred, run failed (trigger on_kill)"
    dag_id, run_id, batch = _start_deferred(system, "s02")

    aborted_at = time.time()
    system.api.mark_run_failed(dag_id, run_id)
    _expect_cancelled(system, batch["id"], aborted_at, record)

    _assert_log_says(system, dag_id, run_id, "submit", f"Cancel batch {batch['id']}: cancel_requested")
