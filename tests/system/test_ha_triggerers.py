"""Two triggerers on the real stack: a trigger reassigned after its triggerer stalled must not cancel the batch.

Airflow 3.3.x cancels a trigger that was moved to another triggerer (this one's heartbeat
lapsed) with the user-action marker and calls its ``on_kill`` when the stalled triggerer comes
back (apache/airflow#73454). The batch is healthy and watched by the other triggerer: it must
keep running and the task must succeed.

The stall is real: the owning triggerer's process group is SIGSTOPped until the other
triggerer (health-check threshold lowered) has taken the trigger over, then SIGCONTed. On
SQLite (WAL) a process stopped while holding the WAL write lock locks every other process
out, so it is stopped only at a moment it holds none (read from ``/proc/locks``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.system.conftest import System
from tests.system.stack import Component, poll

pytestmark = pytest.mark.system

DAG_ID = "sys_ha_deferred"
HEALTH_CHECK_THRESHOLD = 10  # seconds; Airflow's default is 30
START_TIMEOUT = 120.0
REASSIGN_TIMEOUT = 60.0
# The WAL write, checkpoint and recovery locks: bytes 120-122 of the -shm file (sqlite's os_unix.c).
_SHM_EXCLUSIVE = range(120, 123)


def _group_pids(component: Component) -> set[int]:
    assert component.pid is not None
    leader = psutil.Process(component.pid)
    return {leader.pid, *(p.pid for p in leader.children(recursive=True))}


def _db_write_locks(db: Path, pids: set[int]) -> list[str]:
    """Lines of ``/proc/locks`` where one of ``pids`` holds a write lock that would stop other writers."""
    inodes = {}
    for suffix in ("", "-shm", "-wal"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            inodes[os.stat(path).st_ino] = suffix
    held = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 12345 08:01:123456 120 120" (a "->" marks a blocked waiter)
        if "->" in fields or len(fields) < 8 or fields[3] != "WRITE":
            continue
        pid, inode, start = int(fields[4]), int(fields[5].rsplit(":", 1)[1]), fields[6]
        if pid not in pids or inode not in inodes:
            continue
        if inodes[inode] != "-shm" or (start.isdigit() and int(start) in _SHM_EXCLUSIVE):
            held.append(line)
    return held


@contextlib.contextmanager
def stopped(component: Component, db: Path, timeout: float = 30.0) -> Iterator[float]:
    """SIGSTOP a component's process group at a moment it holds no DB write lock; SIGCONT on exit.

    Yields the time it was stopped.
    """
    assert component.pid is not None
    pgid = component.pid
    deadline = time.monotonic() + timeout
    while True:
        pids = _group_pids(component)
        if not _db_write_locks(db, pids):
            os.killpg(pgid, signal.SIGSTOP)
            # Stopped processes cannot take a lock any more: check again, now for certain.
            if not _db_write_locks(db, pids):
                break
            os.killpg(pgid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"{component.name} never let go of the DB write lock within {timeout}s")
        time.sleep(0.05)
    try:
        yield time.monotonic()
    finally:
        os.killpg(pgid, signal.SIGCONT)


def _triggerer_of(system: System, run_id: str) -> int | None:
    ti = system.api.task_instance(DAG_ID, run_id, "submit")
    trigger = (ti or {}).get("trigger") or {}
    owner = trigger.get("triggerer_id")
    return int(owner) if owner is not None else None


def _trigger_log(system: System, run_id: str, triggerer_id: int) -> Path:
    """What one triggerer wrote about the task's trigger (Airflow keeps one file per triggerer)."""
    folder = system.stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=submit"
    return folder / f"attempt=1.log.trigger.{triggerer_id}.log"


def test_reassigned_trigger_leaves_the_batch_running(system: System, record: dict[str, Any]) -> None:
    """The owner of a deferred task's trigger stalls past the health check, comes back: no cancel, task succeeds."""
    record["scenario"] = "12 HA triggerers: owner stalled, trigger reassigned"
    api, stack = system.api, system.stack
    poll(f"DAG {DAG_ID} to be parsed", lambda: api.dag_known(DAG_ID), 120.0, 1.0)
    run_id = system.new_run_id("ha")
    api.trigger(DAG_ID, run_id)
    (batch,) = system.emu.wait_run_batches(DAG_ID, run_id, 1, START_TIMEOUT)
    api.wait_task_state(DAG_ID, run_id, "submit", ["deferred"], START_TIMEOUT)
    poll(f"a status read of {batch['id']}", lambda: system.emu.polls(batch["id"]), 60.0)
    # Only the stack's own triggerer runs yet: it owns the trigger.
    first = poll("the trigger to be assigned", lambda: _triggerer_of(system, run_id), 30.0)

    # A second triggerer that declares the first one dead after HEALTH_CHECK_THRESHOLD seconds.
    known = api.alive_job_ids("TriggererJob")
    stack.add_component(
        "triggerer-2",
        ["triggerer"],
        {
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD),
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        },
    )
    try:
        second = poll(
            "the second triggerer to heartbeat",
            lambda: next(iter(api.alive_job_ids("TriggererJob") - known - {first}), None),
            90.0,
            1.0,
        )
        with stopped(stack.components["triggerer"], stack.home / "airflow.db") as stopped_at:
            # Under load the second triggerer may have taken it over already (its health check
            # is short): the old owner gets the same cancel and on_kill then, stalled or not.
            moved_before_stop = _triggerer_of(system, run_id) != first
            poll(
                f"the trigger to move from triggerer {first} to {second}",
                lambda: _triggerer_of(system, run_id) == second,
                REASSIGN_TIMEOUT,
                0.5,
            )
            reassigned_after = time.monotonic() - stopped_at
            # The new owner reads the batch before the old one wakes up.
            reads = len(system.emu.polls(batch["id"]))
            poll("a read by the new owner", lambda: len(system.emu.polls(batch["id"])) > reads, 30.0)
        resumed_at = time.monotonic()
        # The old owner now gets the trigger cancelled with the user-action marker, runs on_kill
        # and ends the trigger ("trigger completed" in its own part of the task log).
        old_part = _trigger_log(system, run_id, first)
        poll(
            f"triggerer {first} to finish the trigger",
            lambda: "trigger completed" in (old_part.read_text() if old_part.exists() else ""),
            60.0,
            0.25,
            on_timeout=lambda: stack.task_log_text(DAG_ID, run_id, "submit")[-3000:],
        )
        decided_after = time.monotonic() - resumed_at
        time.sleep(1.0)  # a cancel would be sent at once; give it time to arrive
        assert system.emu.cancel_requests(batch["id"]) == [], "the old owner cancelled a healthy batch"
        assert "reassigned, batch" in old_part.read_text()
        api.wait_task_state(DAG_ID, run_id, "submit", ["success"], 150.0)
    finally:
        stack.remove_component("triggerer-2")

    assert system.emu.cancel_requests(batch["id"]) == []
    assert system.emu.status(batch["id"]) == "completed"
    record["moved_before_stop"] = moved_before_stop
    record["stalled_s"] = round(reassigned_after, 1)
    record["decision_after_resume_s"] = round(decided_after, 1)
    record["note"] = (
        f"reassigned {reassigned_after:.1f}s into the stall (threshold {HEALTH_CHECK_THRESHOLD}s); "
        f"old owner ended the trigger {decided_after:.1f}s after SIGCONT; no cancel, task succeeded"
    )
