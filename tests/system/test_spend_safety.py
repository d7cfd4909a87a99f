"""Spend safety on a real Airflow stack: no batch left running, and no old batch passed off as new.

Two scenarios, read from the emulator's request log (the truth about what was created and
cancelled), with the failure clean-up listener off as in every scenario of this stack:

- a mapped, deferred submit task over 5 inputs hits ``execution_timeout``: each map index's
  own ``resume_execution`` cancels its own batch (Airflow skips the trigger's ``on_kill`` on a
  deferral timeout, so nothing else would);
- a finished submit task is cleared after its input changed: the new try creates a second
  batch from the new input instead of returning the first batch's results.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.system.conftest import LINES_PER_SECOND, System
from tests.system.stack import poll

pytestmark = pytest.mark.system

START_TIMEOUT = 180.0  # five task processes start on a shared 2-core machine
CANCEL_REQUEST_TIMEOUT = (
    60.0  # deferral timeout (10 s) + the scheduler's timeout check (~15 s) + a task start
)
CANCELLED_TIMEOUT = 30.0
STATE_TIMEOUT = 180.0
DAG_KNOWN_TIMEOUT = 120.0


def _wait_dag(system: System, dag_id: str) -> None:
    # conftest waits only for its own DAG list; these DAGs sit in the same folder.
    poll(f"DAG {dag_id} parsed", lambda: system.api.dag_known(dag_id), DAG_KNOWN_TIMEOUT, 1.0)


def _log_says(system: System, dag_id: str, run_id: str, task_id: str, text: str, map_index: int = -1) -> None:
    poll(
        f"{text!r} in the log of {task_id}[{map_index}]",
        lambda: text in system.stack.task_log_text(dag_id, run_id, task_id, map_index),
        30.0,
        0.5,
        on_timeout=lambda: system.stack.task_log_text(dag_id, run_id, task_id, map_index)[-3000:],
    )


def _map_index_of(system: System, dag_id: str, run_id: str, batch: dict[str, Any]) -> int:
    from airflow_provider_qwenbatch.client.identity import BatchTag

    ds_name = (batch.get("metadata") or {}).get("ds_name")
    for i in range(5):
        if BatchTag(dag_id, run_id, "submit", i).matches(ds_name):
            return i
    raise AssertionError(f"batch {batch['id']} carries no tag of submit[0..4]: {ds_name!r}")


# ---- 1 ------------------------------------------------------------------------------------


def test_mapped_execution_timeout_cancels_each_own_batch(system: System, record: dict[str, Any]) -> None:
    """5 mapped deferred tasks pass execution_timeout -> all 5 batches cancelled, each by its own task."""
    record["scenario"] = "S1 mapped x5 deferred, execution_timeout (own resume_execution)"
    dag_id, run_id = "sys_spend_mapped_timeout", system.new_run_id("spend1")
    timeout = 10  # as in the DAG
    _wait_dag(system, dag_id)
    # Slower lines for this scenario only: five task processes resuming one after another on two
    # cores must still find their batch running (2,000 lines at 10/s: 200 s).
    system.handle.set_config(lines_per_second=10.0)
    try:
        system.api.trigger(dag_id, run_id)
        any_status = ("validating", "in_progress", "cancelling", "cancelled")
        batches = system.emu.wait_run_batches(dag_id, run_id, 5, START_TIMEOUT, any_status)
        by_index = {_map_index_of(system, dag_id, run_id, b): b for b in batches}
        assert sorted(by_index) == [0, 1, 2, 3, 4], "each map index has exactly one batch"
        ids = {b["id"] for b in batches}
        for i, batch in sorted(by_index.items()):
            entry = system.emu.wait_cancel_request(batch["id"], CANCEL_REQUEST_TIMEOUT + 15 * i)
            # The deferral timeout counts from execute(), which creates the batch within a second.
            record["abort_to_cancel_s"].append(float(entry["wall"]) - (float(batch["created_at"]) + timeout))
        for i, batch in sorted(by_index.items()):
            ended = system.emu.wait_status(batch["id"], "cancelled", CANCELLED_TIMEOUT)
            assert ended["request_counts"]["completed"] < ended["request_counts"]["total"]
            system.api.wait_task_state(dag_id, run_id, "submit", ["failed"], STATE_TIMEOUT, map_index=i)
            # Its own task cancelled it: the log of map index i names batch i, and only that one.
            _log_says(system, dag_id, run_id, "submit", f"Cancel batch {batch['id']}: cancel_requested", i)
            log = system.stack.task_log_text(dag_id, run_id, "submit", i)
            others = [o for o in ids - {batch["id"]} if f"Cancel batch {o}" in log]
            assert others == [], f"submit[{i}] cancelled a sibling's batch: {others}"
        for batch in batches:
            assert len(system.emu.cancel_requests(batch["id"])) == 1, "one cancel request per batch"
        assert len(system.emu.run_batches(dag_id, run_id)) == 5
    finally:
        system.handle.set_config(lines_per_second=LINES_PER_SECOND)
    record["note"] = "5 of 5 cancelled, each by its own map index"


# ---- 2 ------------------------------------------------------------------------------------


def _set_variable(system: System, key: str, value: str) -> None:
    client = system.api.client
    response = client.patch(f"/api/v2/variables/{key}", json={"key": key, "value": value})
    if response.status_code == 404:
        response = client.post("/api/v2/variables", json={"key": key, "value": value})
    assert response.status_code < 300, response.text[:500]


def _clear(system: System, dag_id: str, run_id: str, task_ids: list[str]) -> None:
    body = {"dry_run": False, "task_ids": task_ids, "dag_run_id": run_id, "only_failed": False}
    response = system.api.client.post(f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body)
    assert response.status_code < 300, response.text[:500]


def _input_text(system: System, batch: dict[str, Any]) -> str:
    """The input file exactly as the emulator received it (input files cannot be downloaded, as live)."""
    # conftest starts the emulator with state_dir=<workdir>/emulator-state, beside the data folder.
    stored = system.data.parent / "emulator-state" / "files" / batch["input_file_id"]
    return stored.read_text(encoding="utf-8")


def test_clear_with_changed_input_creates_a_new_batch(system: System, record: dict[str, Any]) -> None:
    """A finished submit task is cleared after its input changed -> a second batch with the new input."""
    record["scenario"] = "S2 clear after the input changed (new batch, not the old one)"
    dag_id, run_id = "sys_spend_clear_input", system.new_run_id("spend2")
    _wait_dag(system, dag_id)
    _set_variable(system, "qwenbatch_sys_prompt", "alpha")
    system.api.trigger(dag_id, run_id)
    system.api.wait_run_state(dag_id, run_id, ["success"], STATE_TIMEOUT)
    (first,) = system.emu.run_batches(dag_id, run_id)
    assert "alpha 0" in _input_text(system, first)

    _set_variable(system, "qwenbatch_sys_prompt", "beta")
    cleared_at = time.time()
    _clear(system, dag_id, run_id, ["build_requests", "submit"])
    ti = poll(
        "submit's second try to succeed",
        lambda: (
            (t := system.api.task_instance(dag_id, run_id, "submit"))
            and t.get("try_number") == 2
            and t.get("state") == "success"
            and t
        ),
        STATE_TIMEOUT,
        0.5,
    )
    assert ti["try_number"] == 2  # a clear increments try_number in Airflow 3 (so the lookup runs)
    batches = system.emu.run_batches(dag_id, run_id)
    assert batches[0]["id"] == first["id"]
    assert len(batches) == 2, f"the cleared task re-used the old batch: {[b['id'] for b in batches]}"
    second = batches[1]
    text = _input_text(system, second)
    assert "beta 0" in text and "alpha" not in text
    assert [json.loads(x)["custom_id"] for x in text.splitlines()] == ["r-0", "r-1", "r-2"]
    assert len(system.emu.creates({first["id"], second["id"]})) == 2
    assert system.emu.status(second["id"]) == "completed"
    _log_says(system, dag_id, run_id, "submit", f"Created batch {second['id']}")
    record["clear_to_new_batch_s"] = round(float(second["created_at"]) - cleared_at, 1)
    record["note"] = f"2 batches; try 2 created {second['id']} from the new input"
