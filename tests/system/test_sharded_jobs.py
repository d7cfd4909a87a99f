"""Sharded jobs (one submit task, many batches) on the real stack, read from the emulator's log.

What a user relies on, for a job split into several batches:

- S3: the run of a deferred sharded task is marked failed -> EVERY shard's batch is cancelled
  (not only the first), and no batch of another run is touched;
- S4: the task process of a sharded task waiting in the worker is SIGKILLed while shards are
  still waiting to be created (``max_active_batches=2``) -> the retry re-attaches to the shards
  that exist, creates only the missing ones (no shard is created twice), never has more than
  2 of its batches unfinished at once, and the run succeeds with every shard completed.

Both DAGs split the same 100 requests into 5 shards of 20 lines (``max_lines_per_batch=20``).
The emulator's line rate is lowered for each scenario only (and restored after it), so that
20-line batches are still running at the moment that matters. S3 runs with the run-failed
listener off (it switches the api-server's listener back off if scenario 5 left it on), so
that the cancels it measures are the trigger's own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

import psutil
import pytest

from tests.system.conftest import LINES_PER_SECOND, System
from tests.system.stack import poll

pytestmark = pytest.mark.system

SHARDS = 5  # as in dags/_shards.py: 100 requests, max_lines_per_batch=20
LINES_PER_SHARD = 20
MAX_ACTIVE_BATCHES = 2  # as in dags/sys_shard_worker_sigkill.py
START_TIMEOUT = 180.0  # two task processes start, validate and upload on a shared 2-core machine
STATE_TIMEOUT = 180.0
CANCEL_REQUEST_TIMEOUT = 40.0
CANCELLED_TIMEOUT = 30.0
DAG_KNOWN_TIMEOUT = 120.0
ANY_STATUS = ("validating", "in_progress", "finalizing", "completed", "cancelling", "cancelled", "failed")


def _wait_dag(system: System, dag_id: str) -> None:
    # conftest waits only for its own DAG list; these DAGs sit in the same folder.
    poll(
        f"DAG {dag_id} parsed",
        lambda: system.api.dag_known(dag_id),
        DAG_KNOWN_TIMEOUT,
        1.0,
        on_timeout=lambda: f"import errors: {system.api.import_errors()}",
    )


def _wait_polled(system: System, batch_id: str, timeout: float = 60.0) -> None:
    """Wait until the waiting task (worker or trigger) has read the batch at least once."""
    poll(f"a status read of batch {batch_id}", lambda: system.emu.polls(batch_id), timeout, 0.25)


def _summary(system: System, dag_id: str, run_id: str, task_id: str = "submit") -> dict[str, Any]:
    """The submit task's return value (the job summary), read through the REST API."""
    response = system.api.client.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    )
    assert response.status_code == 200, response.text[:500]
    value = response.json()["value"]
    result: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return result


def _ds_name(batch: dict[str, Any]) -> str:
    return str((batch.get("metadata") or {}).get("ds_name") or "")


def _assert_shards_completed(summary: dict[str, Any], batch_ids: set[str]) -> None:
    """The job summary names exactly the run's batches, one per 20-line shard, each completed."""
    assert summary.get("kind") == "sharded", summary
    assert summary["status"] == "completed", summary
    assert set(summary["batch_ids"]) == batch_ids and len(summary["batch_ids"]) == SHARDS
    shards = summary["shards"]
    assert [s["batch_id"] for s in shards] == summary["batch_ids"]
    assert [(s["shard"], s["first_line"], s["last_line"]) for s in shards] == [
        (i + 1, i * LINES_PER_SHARD + 1, (i + 1) * LINES_PER_SHARD) for i in range(SHARDS)
    ]
    assert all(s["status"] == "completed" for s in shards), [(s["batch_id"], s["status"]) for s in shards]
    assert summary["request_counts"] == {
        "total": SHARDS * LINES_PER_SHARD,
        "completed": SHARDS * LINES_PER_SHARD,
        "failed": 0,
    }


# ---- S3 -----------------------------------------------------------------------------------


def _switch_listener_off(system: System) -> None:
    """Scenario 5 leaves the api-server's run-failed listener on; S3 proves the trigger, so switch it off."""
    key = "AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED"
    if system.stack.components["api-server"].env.get(key, "True") == "False":
        return
    system.stack.restart("api-server", {key: "False"})
    poll("the api-server to answer", system.api.ping, 120.0, 0.5)
    system.api.client.get("/execution/health")


def test_sharded_deferred_run_marked_failed_cancels_every_shard(
    system: System, record: dict[str, Any]
) -> None:
    """A deferred job of 5 shards; its run marked failed -> all 5 cancelled; another run's 5 untouched."""
    record["scenario"] = "S3 sharded x5 deferred, run failed (every shard cancelled)"
    dag_id = "sys_shard_deferred"
    aborted_run, other_run = system.new_run_id("shard3"), system.new_run_id("shard3-other")
    _switch_listener_off(system)
    _wait_dag(system, dag_id)
    # 20 lines at 0.1/s: 200 s, still running when the test aborts (both tasks start, split, upload).
    system.handle.set_config(lines_per_second=0.1)
    try:
        system.api.trigger(dag_id, aborted_run)
        system.api.trigger(dag_id, other_run)
        victims = system.emu.wait_run_batches(dag_id, aborted_run, SHARDS, START_TIMEOUT)
        bystanders = system.emu.wait_run_batches(dag_id, other_run, SHARDS, START_TIMEOUT)
        for run_id in (aborted_run, other_run):
            system.api.wait_task_state(dag_id, run_id, "submit", ["deferred"], STATE_TIMEOUT)
        for batch in [*victims, *bystanders]:
            _wait_polled(system, batch["id"])  # the trigger watches every shard (and holds its client)
        victim_ids = {b["id"] for b in victims}
        bystander_ids = {b["id"] for b in bystanders}
        assert len(victim_ids) == SHARDS and len({_ds_name(b) for b in victims}) == SHARDS

        seq_before = system.emu.last_seq()
        aborted_at = time.time()
        system.api.mark_run_failed(dag_id, aborted_run)
        for batch in victims:
            entry = system.emu.wait_cancel_request(batch["id"], CANCEL_REQUEST_TIMEOUT)
            record["abort_to_cancel_s"].append(float(entry["wall"]) - aborted_at)
        for batch in victims:
            ended = system.emu.wait_status(batch["id"], "cancelled", CANCELLED_TIMEOUT)
            assert ended["request_counts"]["completed"] < ended["request_counts"]["total"], (
                "it finished first"
            )
        record["abort_to_all_cancelled_s"] = round(time.time() - aborted_at, 2)

        # Nothing else was touched: every cancel request since the abort is for one of its shards,
        # and the other run's shards are still running.
        cancelled = {e["batch_id"] for e in system.handle.requests(since=seq_before, endpoint="cancel_batch")}
        assert cancelled == victim_ids, f"cancel requests for {sorted(cancelled - victim_ids)}"
        assert {system.emu.status(b) for b in bystander_ids} == {"in_progress"}
    finally:
        system.handle.set_config(lines_per_second=LINES_PER_SECOND)

    # The trigger cancelled them (its on_kill; the listener is off): its log names every shard. The
    # triggerer's own output counts too: a cancel answered after the task's log stream closed lands there.
    triggerer_log = system.stack.components["triggerer"].log_path
    for batch_id in sorted(victim_ids):
        line = f"Cancel batch {batch_id}: cancel_requested"
        poll(
            f"{line!r} in the task log or the triggerer's output",
            lambda line=line: (  # type: ignore[misc]
                line in system.stack.task_log_text(dag_id, aborted_run, "submit")
                or line in triggerer_log.read_text(errors="replace")
            ),
            30.0,
            0.5,
        )
    system.api.wait_task_state(dag_id, aborted_run, "submit", ["failed"], STATE_TIMEOUT)
    for batch_id in victim_ids:
        assert len(system.emu.cancel_requests(batch_id)) >= 1

    # The other run, back at the normal rate, completes every shard: none was cancelled.
    system.api.wait_run_state(dag_id, other_run, ["success"], STATE_TIMEOUT)
    assert {system.emu.status(b) for b in bystander_ids} == {"completed"}
    assert all(system.emu.cancel_requests(b) == [] for b in bystander_ids)
    _assert_shards_completed(_summary(system, dag_id, other_run), bystander_ids)
    assert len(system.emu.run_batches(dag_id, aborted_run)) == SHARDS
    record["note"] = (
        f"5 of 5 shards cancelled ({record['abort_to_all_cancelled_s']}s to all cancelled); "
        "other run's 5 completed"
    )


# ---- S4 -----------------------------------------------------------------------------------


def test_sharded_worker_sigkill_retry_creates_only_missing_shards(
    system: System, record: dict[str, Any]
) -> None:
    """SIGKILL while shards wait for a free slot; the retry re-attaches: 5 shards, each created once."""
    record["scenario"] = "S4 sharded x5 in the worker, SIGKILL, retry (no shard twice)"
    dag_id, run_id = "sys_shard_worker_sigkill", system.new_run_id("shard4")
    _wait_dag(system, dag_id)
    # 20 lines at 1/s: ~21 s a shard, so the retry (~10 s after the kill) finds shards 1-2 still
    # running: re-attached, they hold both slots, and shards 3-5 wait for them.
    system.handle.set_config(lines_per_second=1.0)
    try:
        system.api.trigger(dag_id, run_id)
        first = system.emu.wait_run_batches(dag_id, run_id, MAX_ACTIVE_BATCHES, START_TIMEOUT, ANY_STATUS)
        for batch in first:
            _wait_polled(system, batch["id"])  # the task waits on them now
        pid_file = system.data / f"pid-{dag_id}-{run_id}-submit-1"
        pid = int(
            poll(
                "the task's PID file",
                lambda: (pid_file.exists() and pid_file.read_text().strip()) or None,
                30.0,
            )
        )
        victim = psutil.Process(pid)
        # Only ever a process of the stack: a descendant of the scheduler (LocalExecutor worker -> supervisor -> task).
        assert system.stack.components["scheduler"].pid in [p.pid for p in victim.parents()]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=10)
        killed_seq = system.emu.last_seq()
        before_kill = system.emu.run_batches(dag_id, run_id)
        record["shards_at_kill"] = len(before_kill)
        # The scenario is only meaningful if the kill landed while shards were still to be created.
        assert 1 <= len(before_kill) < SHARDS, f"{len(before_kill)} shards existed at the kill"

        ti = system.api.wait_task_state(dag_id, run_id, "submit", ["success", "failed"], STATE_TIMEOUT)
    finally:
        system.handle.set_config(lines_per_second=LINES_PER_SECOND)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    system.api.wait_run_state(dag_id, run_id, ["success"], STATE_TIMEOUT)
    record["kill_to_run_success_s"] = round(time.time() - killed_at, 1)

    batches = system.emu.run_batches(dag_id, run_id)
    ids = {b["id"] for b in batches}
    # No shard created twice: 5 batches, 5 different identities (tag + input fingerprint), 5 creates.
    assert len(batches) == SHARDS, [(b["id"], _ds_name(b)) for b in batches]
    assert len({_ds_name(b) for b in batches}) == SHARDS, [_ds_name(b) for b in batches]
    creates = system.emu.creates(ids)
    assert len(creates) == SHARDS
    # The retry re-attached to what existed and created only the missing ones.
    by_try2 = [e["batch_id"] for e in creates if int(e["seq"]) > killed_seq]
    assert {b["id"] for b in before_kill} <= ids
    assert len(by_try2) == SHARDS - len(before_kill), (len(before_kill), by_try2)
    record["kill_to_first_create_of_try2_s"] = round(
        min(float(e["wall"]) for e in creates if int(e["seq"]) > killed_seq) - killed_at, 1
    )
    # At most max_active_batches of the task's batches unfinished at once, across both tries.
    peak = system.emu.peak_unfinished(ids)
    record["peak_unfinished"] = peak
    assert peak <= MAX_ACTIVE_BATCHES, f"{peak} batches unfinished at once"
    # The emulator's own count at each create (every unfinished batch it holds, this one included):
    # exact at that moment, where the sweep above has 1 s steps; it is this task's count only while
    # no other batch was unfinished (a batch left by an earlier scenario would add to it).
    at_create = [int(e["unfinished"]) for e in creates]
    record["unfinished_at_each_create"] = at_create
    first_create = min(float(e["wall"]) for e in creates)
    others = system.emu.other_batches_unfinished_since(ids, first_create)
    if not others:
        assert max(at_create) <= MAX_ACTIVE_BATCHES, at_create
    else:
        record["unfinished_at_each_create_note"] = f"not checked: {len(others)} other batches ran meanwhile"
    assert all(system.emu.status(b) == "completed" for b in ids)
    assert all(system.emu.cancel_requests(b) == [] for b in ids)
    _assert_shards_completed(_summary(system, dag_id, run_id), ids)

    def log() -> str:
        return system.stack.task_log_text(dag_id, run_id, "submit")

    for batch in before_kill:
        poll(
            f"try 2 re-attaching to {batch['id']} in the task log",
            lambda b=batch["id"]: f"re-attaches to batch {b}" in log(),  # type: ignore[misc]
            30.0,
            0.5,
            on_timeout=lambda: log()[-3000:],
        )
    text = log()
    record["reattached_as"] = [
        m.group(1)
        for b in before_kill
        if (m := re.search(rf"re-attaches to batch {b['id']} \((\w+)\)", text))
    ]
    record["note"] = (
        f"{len(before_kill)} shards at the kill, re-attached as {record['reattached_as']}; "
        f"try 2 created {len(by_try2)}; "
        f"peak {peak} unfinished; 5 of 5 completed"
    )
