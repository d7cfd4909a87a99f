"""BatchesStatusTrigger (one trigger for a sharded job's batches) in Airflow's own TriggerRunner, against the emulator.

The runner, its cancel paths and the supervisor double (which answers the task state only for
the exact dag/run/task/map index) are those of :mod:`tests.integration.test_trigger`. Before
Airflow 3.3 no ``on_kill`` is called: the same tests then drive ``run()``'s own fallback.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.triggers.batches import BatchesStatusTrigger, parse_batches_event
from tests.integration.helpers import create_batch, status_of
from tests.integration.test_trigger import (
    Logs,
    RunnerHarness,
    _until,
    needs_marked_kills,
    supervisor_for,
    task_instance,
)

pytestmark = pytest.mark.integration

IN_FLIGHT = ("validating", "in_progress")


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Logs:
    return Logs(capsys, caplog)


async def _batches(emulator: EmulatorHandle, tmp_path: Path, *lines: int) -> list[str]:
    return [(await asyncio.to_thread(create_batch, emulator, tmp_path, n)).id for n in lines]


def _cancels(emulator: EmulatorHandle, batch_id: str) -> list[Any]:
    return [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=batch_id)]


def _all_polled(emulator: EmulatorHandle, ids: list[str]) -> bool:
    return all(emulator.status_reads(i) for i in ids)


def _events(harness: RunnerHarness) -> list[dict[str, Any]]:
    """The payloads the runner queued: ``TriggerEventEntry`` from 3.2, ``(trigger_id, event)`` before."""
    return [(e[1] if isinstance(e, tuple) else e.event).payload for e in harness.runner.events]


async def _event(harness: RunnerHarness, timeout: float = 60.0) -> dict[str, Any]:
    """The one event of a trigger that ends by itself (the runner's task then returns)."""
    await asyncio.wait_for(harness.task, timeout)
    (event,) = _events(harness)
    return event


async def test_all_batches_end_one_done_event_with_every_summary(
    emulator: EmulatorHandle, tmp_path: Path, logs: Logs
) -> None:
    ids = await _batches(emulator, tmp_path, 5, 10, 15)
    harness = RunnerHarness(BatchesStatusTrigger(batch_ids=ids, poll_interval=0.1))
    event = await _event(harness)

    payload = parse_batches_event(event)
    assert payload.status == "done"
    assert payload.batch_ids == ids and payload.ended == ids and payload.unfinished == []
    assert set(payload.batches) == set(ids)
    assert [payload.batches[i]["request_counts"] for i in ids] == [
        {"total": n, "completed": n, "failed": 0} for n in (5, 10, 15)
    ]
    assert all(payload.batches[i]["output_file_id"].startswith("file-batch_output-") for i in ids)
    assert payload.message == "3/3 batches ended (3 completed); lines 30/30 (100.0%), failed 0"
    assert "3/3 batches done; lines 30/30 (100.0%), failed 0" in logs.text
    assert all(_cancels(emulator, i) == [] for i in ids)


async def test_wake_on_first_end_wakes_when_the_first_batch_ends(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.set_config(lines_per_second=20.0)
    quick, *slow = await _batches(emulator, tmp_path, 3, 2000, 2000)
    ids = [*slow, quick]  # the first to end is not the first watched
    harness = RunnerHarness(BatchesStatusTrigger(batch_ids=ids, poll_interval=0.1, wake_on_first_end=True))
    payload = parse_batches_event(await _event(harness))

    assert payload.status == "done"
    assert payload.ended == [quick] and payload.unfinished == slow
    assert payload.batches[quick]["status"] == "completed"
    assert {payload.batches[i]["status"] for i in slow} <= set(IN_FLIGHT)
    assert payload.message.startswith("1/3 batches ended (1 completed); lines ")
    # Waking is not a kill: the others go on.
    assert all(status_of(emulator, i) in IN_FLIGHT for i in slow)
    assert all(_cancels(emulator, i) == [] for i in ids)


@pytest.mark.parametrize("map_index", [-1, 2])
async def test_user_kill_cancels_every_unfinished_batch_concurrently(
    emulator: EmulatorHandle, tmp_path: Path, logs: Logs, map_index: int
) -> None:
    """Mark failed: the task instance left DEFERRED; every batch still running is cancelled, all at once."""
    emulator.set_config(lines_per_second=20.0)
    quick, *slow = await _batches(emulator, tmp_path, 3, 2000, 2000, 2000)
    # Each cancel answered after 2 s: sent one after another, never all in flight together.
    emulator.set_faults({"cancel_batch": {"latency_ms": 2000}})
    ti = task_instance(map_index)
    trigger = BatchesStatusTrigger(batch_ids=[quick, *slow], poll_interval=0.2)
    async with supervisor_for(ti, state="failed") as supervisor:
        harness = RunnerHarness(trigger, ti)
        await _until(lambda: trigger.ended() == [quick], what="the trigger to see the first batch end")
        await harness.cancel_until_done()
        await harness.finished()
        await _until(
            lambda: (
                sorted(
                    e["batch_id"] for e in emulator.requests(endpoint="cancel_batch") if e["status"] is None
                )
                == sorted(slow)
            ),
            timeout=10,
            what="the three cancels to be in flight together",
        )
        await _until(
            lambda: all(_cancels(emulator, i) == [200] for i in slow), timeout=15, what="the cancels"
        )
    asked = supervisor.state_requests()
    assert asked and all(supervisor.is_exactly_ours(m) for m in asked), asked
    assert _cancels(emulator, quick) == []  # it had ended: nothing to cancel
    for batch_id in slow:
        await _until(lambda b=batch_id: status_of(emulator, b) == "cancelled", what=f"{batch_id} cancelled")
    assert "Kill: cancel of 3 unfinished batches: 3 cancel_requested" in logs.text
    assert _events(harness) == []


@pytest.mark.parametrize("map_index", [-1, 3])
async def test_reassigned_trigger_cancels_no_batch(
    emulator: EmulatorHandle, tmp_path: Path, logs: Logs, map_index: int
) -> None:
    """Airflow 3.3.x cancels a reassigned trigger like a kill; the task instance is still DEFERRED."""
    emulator.set_config(lines_per_second=20.0)
    ids = await _batches(emulator, tmp_path, 2000, 2000, 2000)
    ti = task_instance(map_index)
    async with supervisor_for(ti, state="deferred") as supervisor:
        harness = RunnerHarness(BatchesStatusTrigger(batch_ids=ids, poll_interval=0.2), ti)
        await _until(lambda: _all_polled(emulator, ids), what="the trigger's first poll")
        await harness.cancel_until_done()
        await harness.finished()
        await _until(lambda: "reassigned" in logs.text, what="the decision to be logged")
    asked = supervisor.state_requests()
    assert asked and all(supervisor.is_exactly_ours(m) for m in asked), asked
    await asyncio.sleep(0.5)
    assert all(_cancels(emulator, i) == [] for i in ids)
    assert all(status_of(emulator, i) in IN_FLIGHT for i in ids)


@pytest.mark.parametrize("state", ["deferred", pytest.param("failed", marks=needs_marked_kills)])
async def test_triggerer_restart_cancels_no_batch(
    emulator: EmulatorHandle, tmp_path: Path, state: str
) -> None:
    """A shutdown cancels without the user-action marker; on 3.3 even a task state that left DEFERRED is not asked."""
    emulator.set_config(lines_per_second=20.0)
    ids = await _batches(emulator, tmp_path, 2000, 2000, 2000)
    ti = task_instance()
    async with supervisor_for(ti, state=state):
        harness = RunnerHarness(BatchesStatusTrigger(batch_ids=ids, poll_interval=0.2), ti)
        await _until(lambda: _all_polled(emulator, ids), what="the trigger's first poll")
        harness.task.cancel()  # what a triggerer shutdown does
        await harness.finished()
        await asyncio.sleep(1.0)
    assert all(_cancels(emulator, i) == [] for i in ids)
    assert all(status_of(emulator, i) in IN_FLIGHT for i in ids)


async def test_cancel_on_kill_false_leaves_every_batch(
    emulator: EmulatorHandle, tmp_path: Path, logs: Logs
) -> None:
    emulator.set_config(lines_per_second=20.0)
    ids = await _batches(emulator, tmp_path, 2000, 2000)
    ti = task_instance()
    async with supervisor_for(ti, state="failed"):
        trigger = BatchesStatusTrigger(batch_ids=ids, poll_interval=0.2, cancel_on_kill=False)
        harness = RunnerHarness(trigger, ti)
        await _until(lambda: _all_polled(emulator, ids), what="the trigger's first poll")
        await harness.cancel_until_done()
        await harness.finished()
        await asyncio.sleep(0.5)
    assert all(_cancels(emulator, i) == [] for i in ids)
    assert all(status_of(emulator, i) in IN_FLIGHT for i in ids)


async def test_deadline_cancels_every_unfinished_batch_then_timeout(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.set_config(lines_per_second=20.0)
    quick, *slow = await _batches(emulator, tmp_path, 3, 2000, 2000)
    # No kill clock at the deadline: a transient error on a cancel is retried.
    emulator.set_faults({"cancel_batch": {"fail_next": ["503"]}})
    trigger = BatchesStatusTrigger(batch_ids=[*slow, quick], poll_interval=0.2, deadline=time.time() + 2.0)
    payload = parse_batches_event(await _event(RunnerHarness(trigger)))

    assert payload.status == "timeout"
    assert payload.ended == [quick] and payload.unfinished == slow
    assert re.fullmatch(
        rf"2 of 3 batches still unfinished after the timeout of \d+s \({slow[0]}, {slow[1]}\); "
        r"cancel: 2 cancel_requested",
        payload.message,
    ), payload.message
    assert _cancels(emulator, quick) == []
    assert sorted(s for i in slow for s in _cancels(emulator, i)) == [200, 200, 503]
    for batch_id in slow:
        await _until(lambda b=batch_id: status_of(emulator, b) == "cancelled", what=f"{batch_id} cancelled")


async def test_unknown_batch_gives_an_error_event_with_the_others_read(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    (real,) = await _batches(emulator, tmp_path, 2000)
    missing = "batch_00000000-0000-0000-0000-000000000000"
    harness = RunnerHarness(BatchesStatusTrigger(batch_ids=[real, missing], poll_interval=0.2))
    payload = parse_batches_event(await _event(harness))
    assert payload.status == "error"
    assert missing in payload.message and "HTTP 404" in payload.message and "x-request-id=" in payload.message
    assert list(payload.batches) == [real] and payload.ended == []
    assert _cancels(emulator, real) == []  # an error event cancels nothing: the operator decides


async def test_serialized_trigger_repr_and_logs_have_no_secret(
    emulator: EmulatorHandle, tmp_path: Path, logs: Logs
) -> None:
    """A trigger that resolved the real Connection (the key is in its client), then was killed."""
    from airflow.models.trigger import Trigger

    emulator.set_config(lines_per_second=20.0)
    ids = await _batches(emulator, tmp_path, 2000, 2000)
    ti = task_instance()
    trigger = BatchesStatusTrigger(
        batch_ids=ids, poll_interval=0.2, deadline=time.time() + 600, wake_on_first_end=True
    )
    async with supervisor_for(ti, state="failed"):
        harness = RunnerHarness(trigger, ti)
        await _until(lambda: _all_polled(emulator, ids), what="the trigger's first poll")
        assert trigger._client is not None  # it holds the key now
        path, kwargs = trigger.serialize()
        row = Trigger.from_object(trigger)  # what the triggerer table stores
        shown = repr(trigger) + str(trigger)
        await harness.cancel_until_done()
        await _until(lambda: all(_cancels(emulator, i) for i in ids), what="the cancels")
    assert path == "airflow_provider_qwenbatch.triggers.batches.BatchesStatusTrigger"
    assert kwargs == {
        "batch_ids": ids,
        "conn_id": "qwen_batch_default",
        "poll_interval": 0.2,
        "deadline": trigger.deadline,
        "cancel_on_kill": True,
        "wake_on_first_end": True,
    }
    assert BatchesStatusTrigger(**kwargs).serialize() == (path, kwargs)
    key = emulator.api_key
    assert key not in json.dumps(kwargs)
    assert key not in json.dumps(row.kwargs, default=str) and key not in str(row.encrypted_kwargs)
    assert key not in shown
    assert "Cancel batch" in logs.text  # the kill was logged (and captured)
    assert key not in logs.text


def test_no_batch_or_a_string_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one batch id"):
        BatchesStatusTrigger(batch_ids=[])
    with pytest.raises(TypeError, match="list of batch ids"):
        BatchesStatusTrigger(batch_ids="batch_1")
    assert BatchesStatusTrigger(batch_ids=["b1", "b2", "b1"]).batch_ids == ["b1", "b2"]


@pytest.fixture
def no_retries(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Connection whose client sends each read once (each failed read is one failed poll)."""
    from airflow_provider_qwenbatch.triggers import batches
    from tests.integration.conftest import conn_json

    monkeypatch.setenv("AIRFLOW_CONN_QWEN_NO_RETRIES", conn_json(emulator, max_retries=0))
    monkeypatch.setattr(batches, "MAX_FAILED_POLLS", 3)
    return "qwen_no_retries"


async def test_polls_failing_in_a_row_give_an_error_event_naming_the_batch(
    emulator: EmulatorHandle, tmp_path: Path, no_retries: str, logs: Logs
) -> None:
    (batch,) = await _batches(emulator, tmp_path, 2000)
    # Every list page and every read of the batch answers 503.
    emulator.set_faults({"list_batches": {"p_503": 1.0}, "get_batch": {"p_503": 1.0}})
    trigger = BatchesStatusTrigger(batch_ids=[batch], conn_id=no_retries, poll_interval=0.2)
    payload = parse_batches_event(await _event(RunnerHarness(trigger)))
    assert payload.status == "error"
    assert f"3 polls of batch {batch} failed" in payload.message, payload.message
    assert "HTTP 503" in payload.message and "x-request-id=" in payload.message
    assert [r["status"] for r in emulator.requests(endpoint="get_batch", batch_id=batch)] == [503] * 3
    assert "Poll 2 of batch" in logs.text
    assert _cancels(emulator, batch) == []  # an error event cancels nothing: the operator decides


async def test_fewer_failed_polls_in_a_row_than_the_limit_are_ridden_out(
    emulator: EmulatorHandle, tmp_path: Path, no_retries: str
) -> None:
    (batch,) = await _batches(emulator, tmp_path, 3)
    emulator.set_faults({"list_batches": {"p_503": 1.0}, "get_batch": {"fail_next": ["503", "503"]}})
    trigger = BatchesStatusTrigger(batch_ids=[batch], conn_id=no_retries, poll_interval=0.2)
    payload = parse_batches_event(await _event(RunnerHarness(trigger)))
    assert payload.status == "done", payload.message
    assert payload.ended == [batch] and payload.batches[batch]["status"] == "completed"
    assert [r["status"] for r in emulator.requests(endpoint="get_batch", batch_id=batch)][:3] == [
        503,
        503,
        200,
    ]
