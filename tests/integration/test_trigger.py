"""
BatchStatusTrigger driven by Airflow's own TriggerRunner.run_trigger, in-process, against the emulator.

The runner's cancel paths are the real ones: a user kill cancels with the
``__airflow_user_action__`` marker and then awaits ``on_kill()``; a triggerer restart
cancels without it. Airflow 3.3.x cancels a trigger reassigned to another triggerer the same
way as a user kill: only the task instance's state (still DEFERRED) tells them apart. That
state comes over Airflow's real trigger comms channel from a supervisor double
(:mod:`tests.integration.supervisor_comms`) that answers only for the exact task instance.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.compat import AIRFLOW_V_3_2_PLUS, AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.triggers import kill_decision
from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger
from tests.integration.conftest import conn_json
from tests.integration.helpers import create_batch, status_of
from tests.integration.supervisor_comms import SupervisorDouble

pytestmark = pytest.mark.integration

# Before 3.3 the triggerer cancels a user kill exactly like a restart (no marker, no on_kill):
# the trigger tells them apart by the task state, asked through the triggerer's supervisor,
# which this in-process runner has not got. tests/compat/test_state_query.py covers that query
# on each minor, the system tests (s02, s03, s08, HA) the whole kill path.
# Before 3.2 the comms channel carries one request at a time (asend holds a lock until its own
# answer): a request the supervisor never answers holds the channel, so no later request can
# overtake it. The real supervisor answers each request in turn; these tests stall one.
needs_pipelined_comms = pytest.mark.skipif(
    not AIRFLOW_V_3_2_PLUS,
    reason=f"Airflow {AIRFLOW_VERSION} serialises trigger comms requests (pipelined from 3.2): a stalled answer blocks the channel",
)
needs_marked_kills = pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS,
    reason=f"Airflow {AIRFLOW_VERSION} marks no user kill and calls no on_kill (3.3+); covered by the system tests",
)


def task_instance(map_index: int = -1) -> Any:
    """The task instance a triggerer puts on a trigger (the workload's, Airflow's own model)."""
    # Named TaskInstance in airflow.executors.workloads on every minor (TaskInstanceDTO from 3.2).
    from airflow.executors.workloads import TaskInstance as TaskInstanceDTO

    return TaskInstanceDTO(
        id=uuid.uuid4(),
        dag_id="qwen_batch_dag",
        run_id="manual__2026-12-01T09:00:00+00:00",
        task_id="submit",
        map_index=map_index,
        try_number=1,
        dag_version_id=uuid.uuid4(),
        pool_slots=1,
        priority_weight=1,
        queue="default",  # required before 3.1
    )


def supervisor_for(ti: Any, **kwargs: Any) -> SupervisorDouble:
    return SupervisorDouble(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, **kwargs)


class RunnerHarness:
    """One trigger inside a real TriggerRunner."""

    def __init__(self, trigger: BatchStatusTrigger, ti: Any = None) -> None:
        from airflow.jobs.triggerer_job_runner import TriggerRunner

        trigger.task_instance = ti
        trigger.timeout_after = None  # set by create_triggers (read by run_trigger before 3.1)
        self.runner = TriggerRunner()
        self.task = asyncio.get_running_loop().create_task(self.runner.run_trigger(1, trigger))
        self.runner.triggers[1] = {
            "task": self.task,
            "name": "qwen-trigger",
            "events": 0,
            "is_watcher": False,
        }

    async def user_kill(self) -> None:
        self.runner.to_cancel.append(1)
        await self.runner.cancel_triggers()

    async def cancel_until_done(self, timeout: float = 30.0) -> None:
        """What Airflow 3.3.2 does for a trigger its supervisor put in ``cancelling_triggers``.

        A user kill and a reassignment alike: the supervisor answers every state sync (about
        once a second) with the trigger in ``to_cancel`` until the trigger has finished.
        """
        deadline = time.monotonic() + timeout
        while not self.task.done() and time.monotonic() < deadline:
            await self.user_kill()
            await asyncio.wait({self.task}, timeout=1.0)

    async def finished(self, timeout: float = 30.0) -> None:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout)

    def events(self) -> list[dict[str, Any]]:
        return [entry.event.payload for entry in self.runner.events]


async def _until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Logs:
    """Everything logged during a test: the stdlib records and what structlog wrote to stdout."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self._capsys, self._caplog, self._out = capsys, caplog, ""
        caplog.set_level(logging.DEBUG)

    @property
    def text(self) -> str:
        captured = self._capsys.readouterr()
        self._out += captured.out + captured.err
        return self._out + self._caplog.text


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Logs:
    return Logs(capsys, caplog)


@pytest.fixture
async def long_batch(emulator: EmulatorHandle, tmp_path: Path) -> AsyncIterator[str]:
    emulator.set_config(lines_per_second=20.0)
    batch = await asyncio.to_thread(create_batch, emulator, tmp_path, 2000)
    yield batch.id


def _polled(emulator: EmulatorHandle, batch_id: str) -> bool:
    # Triggers read statuses from pages of the in-flight list (status_watch), one by one otherwise.
    return bool(emulator.status_reads(batch_id))


@needs_marked_kills
async def test_user_kill_cancels_the_batch(emulator: EmulatorHandle, long_batch: str) -> None:
    harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2))
    await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
    await harness.user_kill()
    await harness.finished()
    cancels = emulator.requests(endpoint="cancel_batch", batch_id=long_batch)
    assert [c["status"] for c in cancels] == [200]
    await _until(lambda: status_of(emulator, long_batch) == "cancelled", what="cancelled")
    assert harness.events() == []


async def test_restart_does_not_cancel(emulator: EmulatorHandle, long_batch: str) -> None:
    harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2))
    await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
    harness.task.cancel()  # what a triggerer shutdown does: no user-action marker
    await harness.finished()
    await asyncio.sleep(0.5)
    assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []
    assert status_of(emulator, long_batch) in ("validating", "in_progress")


@needs_marked_kills
async def test_restart_of_a_killed_task_still_does_not_cancel(
    emulator: EmulatorHandle, long_batch: str
) -> None:
    """No marker, no kill: even a state that says the task left DEFERRED is not asked for."""
    ti = task_instance()
    async with supervisor_for(ti, state="failed") as supervisor:
        harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2), ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        await _until(lambda: supervisor.state_requests(), what="the warm-up request")
        harness.task.cancel()  # a triggerer shutdown
        await harness.finished()
        await asyncio.sleep(0.5)
        assert len(supervisor.state_requests()) == 1  # the warm-up only
    assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []


@needs_marked_kills
async def test_kill_with_slow_server_still_cancels_despite_recancellation(
    emulator: EmulatorHandle, long_batch: str
) -> None:
    emulator.set_faults({"cancel_batch": {"latency_ms": 3000}})
    harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2))
    await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
    await harness.user_kill()
    # Airflow 3.3.2's triggerer re-cancels a cancelled trigger about once a second.
    for _ in range(3):
        await asyncio.sleep(1.0)
        harness.task.cancel()
    await harness.finished()
    await _until(
        lambda: (
            [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=long_batch)] == [200]
        ),
        timeout=15,
        what="the slow cancel to be answered",
    )
    await _until(lambda: status_of(emulator, long_batch) == "cancelled", what="cancelled")


async def test_cancel_on_kill_false_leaves_the_batch(emulator: EmulatorHandle, long_batch: str) -> None:
    harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2, cancel_on_kill=False))
    await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
    await harness.user_kill()
    await harness.finished()
    assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []


async def _collect(trigger: BatchStatusTrigger) -> list[dict[str, Any]]:
    events = []
    async for event in trigger.run():
        events.append(event.payload)
    await trigger.cleanup()
    return events


async def test_triggers_of_one_loop_share_list_pages(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """20 deferred batches in one loop: statuses come from shared pages; each end is read from the batch."""
    emulator.set_config(lines_per_second=2.0)  # 3 lines: each batch stays in flight for a few pages
    batches = [await asyncio.to_thread(create_batch, emulator, tmp_path, 3) for _ in range(20)]
    ids = {b.id for b in batches}
    seq0 = emulator.requests()[-1]["seq"]
    triggers = [BatchStatusTrigger(batch_id=b.id, poll_interval=0.2) for b in batches]
    results = await asyncio.wait_for(asyncio.gather(*(_collect(t) for t in triggers)), 90)

    assert [[e["status"] for e in events] for events in results] == [["success"]] * 20
    assert {events[0]["batch_id"] for events in results} == ids
    assert all(events[0]["batch"]["request_counts"]["completed"] == 3 for events in results)
    # One GET /batches/{id} per batch: its end, read from the batch itself.
    singles = emulator.requests(since=seq0, endpoint="get_batch")
    assert sorted(e["batch_id"] for e in singles) == sorted(ids)
    # Every other read came from list pages that showed all 20 at once, spaced to the default budget.
    pages = emulator.requests(since=seq0, endpoint="list_batches")
    assert any(ids <= set(p["listed"]) for p in pages)
    assert len(pages) < len(singles) * 2  # 20 triggers polling every 0.2 s would read ~100 times a second
    starts = [p["monotonic"] for p in pages]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(starts)), starts


async def test_one_success_event_with_summary(emulator: EmulatorHandle, tmp_path: Path) -> None:
    batch = await asyncio.to_thread(create_batch, emulator, tmp_path, 5)
    events = await asyncio.wait_for(_collect(BatchStatusTrigger(batch_id=batch.id, poll_interval=0.1)), 30)
    assert len(events) == 1
    (event,) = events
    assert event["status"] == "success" and event["batch_status"] == "completed"
    assert event["batch"]["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert event["batch"]["output_file_id"].startswith("file-batch_output-")


async def test_failed_batch_event_carries_server_errors(emulator: EmulatorHandle, tmp_path: Path) -> None:
    rows = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completion", "body": {"model": "qwen-flash"}},
    ]
    batch = await asyncio.to_thread(create_batch, emulator, tmp_path, rows=rows)
    (event,) = await asyncio.wait_for(_collect(BatchStatusTrigger(batch_id=batch.id, poll_interval=0.1)), 30)
    assert event["status"] == "failed" and event["batch_status"] == "failed"
    assert "url_not_found" in event["message"] and "line 1" in event["message"]


async def test_deadline_cancels_and_sends_timeout(emulator: EmulatorHandle, long_batch: str) -> None:
    trigger = BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2, deadline=time.time() + 1.0)
    (event,) = await asyncio.wait_for(_collect(trigger), 30)
    assert event["status"] == "timeout"
    assert "cancel: cancel_requested" in event["message"]
    assert len(emulator.requests(endpoint="cancel_batch", batch_id=long_batch)) == 1


async def test_deadline_message_reads_like_the_workers_and_its_cancel_retries(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    # The deferred path says what the worker path says (same operator timeout), and its cancel,
    # with no SIGKILL clock, retries a transient error instead of leaving the batch billing.
    emulator.set_config(lines_per_second=10.0)
    batch = await asyncio.to_thread(create_batch, emulator, tmp_path, 1000)
    assert batch.created_at is not None
    emulator.set_faults({"cancel_batch": {"fail_next": ["503"]}})
    trigger = BatchStatusTrigger(batch_id=batch.id, poll_interval=0.2, deadline=batch.created_at + 2)
    (event,) = await asyncio.wait_for(_collect(trigger), 30)
    assert event["status"] == "timeout"
    assert re.fullmatch(
        rf"batch {batch.id} still in_progress after the timeout of 2s; cancel: cancel_requested "
        r"\(x-request-id=\S+\)",
        event["message"],
    ), event["message"]
    assert [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=batch.id)] == [503, 200]


@pytest.mark.parametrize(
    ("case", "needle"),
    [("unknown_batch", "HTTP 404"), ("wrong_key", "HTTP 401")],
)
async def test_bad_answers_give_an_error_event_not_a_crash(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str, needle: str
) -> None:
    batch_id = "batch_00000000-0000-0000-0000-000000000000"
    if case == "wrong_key":
        batch_id = (await asyncio.to_thread(create_batch, emulator, tmp_path, 1)).id
        monkeypatch.setenv(
            "AIRFLOW_CONN_QWEN_WRONG", conn_json(emulator).replace(emulator.api_key, "sk-wrong")
        )
    conn_id = "qwen_wrong" if case == "wrong_key" else "qwen_batch_default"
    (event,) = await asyncio.wait_for(_collect(BatchStatusTrigger(batch_id=batch_id, conn_id=conn_id)), 30)
    assert event["status"] == "error"
    assert needle in event["message"] and "x-request-id=" in event["message"]


async def test_serialized_trigger_repr_and_logs_have_no_secret(
    emulator: EmulatorHandle, long_batch: str, logs: Logs
) -> None:
    """A trigger that resolved the real Connection (the key is in its client) and was killed."""
    from airflow.models.trigger import Trigger

    ti = task_instance()
    trigger = BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2, deadline=time.time() + 600)
    async with supervisor_for(ti, state="failed"):
        harness = RunnerHarness(trigger, ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        assert trigger._client is not None  # it holds the key now
        path, kwargs = trigger.serialize()
        row = Trigger.from_object(trigger)  # what the triggerer table stores
        shown = repr(trigger) + str(trigger)
        await harness.cancel_until_done()
    await _until(lambda: emulator.requests(endpoint="cancel_batch", batch_id=long_batch), what="the cancel")
    assert path == "airflow_provider_qwenbatch.triggers.batch.BatchStatusTrigger"
    assert set(kwargs) == {"batch_id", "conn_id", "poll_interval", "deadline", "cancel_on_kill"}
    assert BatchStatusTrigger(**kwargs).serialize() == (path, kwargs)
    key = emulator.api_key
    assert key not in json.dumps(kwargs)
    assert key not in json.dumps(row.kwargs, default=str) and key not in str(row.encrypted_kwargs)
    assert key not in shown
    assert "Cancel batch" in logs.text  # the kill was logged (and captured)
    assert key not in logs.text


@pytest.mark.parametrize("map_index", [-1, 3])
async def test_reassigned_trigger_leaves_the_batch_running(
    emulator: EmulatorHandle, long_batch: str, logs: Logs, map_index: int
) -> None:
    """Airflow 3.3.x cancels a reassigned trigger like a kill; its task instance is still DEFERRED."""
    ti = task_instance(map_index)
    async with supervisor_for(ti, state="deferred") as supervisor:
        harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2), ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        await harness.cancel_until_done()
        await harness.finished()
        await _until(lambda: "reassigned" in logs.text, what="the decision to be logged")
    asked = supervisor.state_requests()
    assert asked and all(supervisor.is_exactly_ours(m) for m in asked), asked
    await asyncio.sleep(0.5)
    assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []
    assert status_of(emulator, long_batch) in ("validating", "in_progress")


@pytest.mark.parametrize("state", ["failed", "success", None])
async def test_kill_cancels_when_the_task_left_deferred(
    emulator: EmulatorHandle, long_batch: str, state: str | None
) -> None:
    """Mark failed / mark success / clear: the task instance is no longer DEFERRED."""
    ti = task_instance()
    async with supervisor_for(ti, state=state) as supervisor:
        harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2), ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        await harness.cancel_until_done()
        await harness.finished()
        await _until(
            lambda: emulator.requests(endpoint="cancel_batch", batch_id=long_batch), what="the cancel"
        )
    asked = supervisor.state_requests()
    assert asked and all(supervisor.is_exactly_ours(m) for m in asked), asked
    assert [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=long_batch)] == [200]
    await _until(lambda: status_of(emulator, long_batch) == "cancelled", what="cancelled")


@needs_pipelined_comms
async def test_state_late_then_killed_cancels_after_the_answer(
    emulator: EmulatorHandle, long_batch: str, logs: Logs
) -> None:
    """The first state request is never answered: the batch stays until a later ask proves the kill."""
    ti = task_instance()
    async with supervisor_for(ti, state="failed") as supervisor:
        harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2), ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        await _until(lambda: supervisor.state_requests(), what="the warm-up request")
        supervisor.stall_states = 1  # the kill's first request
        await harness.cancel_until_done()
        await _until(lambda: "Cannot tell yet" in logs.text, what="the warning")
        assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []
        await _until(
            lambda: emulator.requests(endpoint="cancel_batch", batch_id=long_batch),
            timeout=15,
            what="the cancel",
        )
        assert len(supervisor.state_requests()) >= 2
    await _until(lambda: status_of(emulator, long_batch) == "cancelled", what="cancelled")


@needs_pipelined_comms
async def test_state_never_answered_leaves_the_batch_running(
    emulator: EmulatorHandle,
    long_batch: str,
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kill_decision, "KILL_CHECK_WAIT", 0.5)
    monkeypatch.setattr(kill_decision, "KILL_CHECK_PATIENCE", 2.0)
    monkeypatch.setattr(kill_decision, "KILL_CHECK_RETRY", 0.5)
    ti = task_instance()
    async with supervisor_for(ti, state="failed") as supervisor:
        harness = RunnerHarness(BatchStatusTrigger(batch_id=long_batch, poll_interval=0.2), ti)
        await _until(lambda: _polled(emulator, long_batch), what="the trigger's first poll")
        await _until(lambda: supervisor.state_requests(), what="the warm-up request")
        supervisor.stall_states = 10**6  # the supervisor stops answering
        await harness.cancel_until_done()
        await _until(lambda: "Still cannot tell" in logs.text, what="giving up")
        assert len(supervisor.state_requests()) >= 4  # asked again after the warm-up, a new request each time
    assert emulator.requests(endpoint="cancel_batch", batch_id=long_batch) == []
    assert status_of(emulator, long_batch) in ("validating", "in_progress")


async def test_kill_while_resolving_the_connection_cancels(
    emulator: EmulatorHandle, long_batch: str, logs: Logs
) -> None:
    """Killed in the first seconds after deferring: the Connection lookup is still in flight."""
    ti = task_instance()
    connection = {
        "conn_id": "qwen_via_supervisor",
        "conn_type": "qwen_batch",
        "host": emulator.base_url,
        "password": emulator.api_key,
        "extra": json.dumps({"max_retries": 3}),
        "schema": None,
        "login": None,
        "port": None,
    }
    async with supervisor_for(ti, state="failed", connection=connection, connection_delay=2.0) as supervisor:
        trigger = BatchStatusTrigger(batch_id=long_batch, conn_id="qwen_via_supervisor", poll_interval=0.2)
        harness = RunnerHarness(trigger, ti)
        await _until(
            lambda: any(type(m).__name__ == "GetConnection" for m in supervisor.asked), what="lookup"
        )
        await harness.cancel_until_done()
        await harness.finished()
        await _until(
            lambda: emulator.requests(endpoint="cancel_batch", batch_id=long_batch), what="the cancel"
        )
    assert [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=long_batch)] == [200]
    assert "cancel_on_kill=False" not in logs.text
