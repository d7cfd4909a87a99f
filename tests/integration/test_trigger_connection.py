"""Triggers that start together share one Connection lookup (``triggers/connection_cache``).

Driven by Airflow's own ``TriggerRunner.run_trigger`` (greenback portal, event queue) in one
loop, with the Connection served over Airflow's real trigger comms channel by the supervisor
double (the execution API secrets backend, as in a triggerer), and statuses from the emulator.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.triggers import connection_cache
from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger
from tests.integration.helpers import create_batch
from tests.integration.supervisor_comms import SupervisorDouble
from tests.integration.test_trigger import supervisor_for, task_instance

pytestmark = pytest.mark.integration

CONN_ID = "qwen_via_supervisor"


def served_connection(emulator: EmulatorHandle, key: str | None = None) -> dict[str, Any]:
    """The Connection as the supervisor serves it (``ConnectionResult`` fields)."""
    return {
        "conn_id": CONN_ID,
        "conn_type": "qwen_batch",
        "host": emulator.base_url,
        "password": key or emulator.api_key,
        "extra": json.dumps({"max_retries": 0}),
        "schema": None,
        "login": None,
        "port": None,
    }


class Runner:
    """Many triggers in one real ``TriggerRunner``, started as ``create_triggers`` starts them."""

    def __init__(self) -> None:
        from airflow.jobs.triggerer_job_runner import TriggerRunner

        self.runner = TriggerRunner()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, batch_ids: list[str], ti: Any) -> None:
        for batch_id in batch_ids:
            trigger_id = len(self.tasks) + 1
            trigger = BatchStatusTrigger(batch_id=batch_id, conn_id=CONN_ID, poll_interval=0.2)
            trigger.task_instance = ti
            trigger.timeout_after = None  # set by create_triggers (read by run_trigger before 3.1)
            self.runner.triggers[trigger_id] = {"name": f"t{trigger_id}", "events": 0, "is_watcher": False}
            await asyncio.sleep(0)  # create_triggers yields to the loop before each trigger
            task = asyncio.get_running_loop().create_task(self.runner.run_trigger(trigger_id, trigger))
            self.runner.triggers[trigger_id]["task"] = task
            self.tasks.append(task)

    async def events(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The payloads of the first ``count`` events, by trigger id, once that many were sent."""
        deadline = time.monotonic() + timeout
        while len(self.runner.events) < count:
            assert time.monotonic() < deadline, f"{len(self.runner.events)} of {count} events"
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)
        # ``TriggerEventEntry`` from Airflow 3.2, ``(trigger_id, event)`` before.
        entries = [
            (e[0], e[1]) if isinstance(e, tuple) else (e.trigger_id, e.event) for e in self.runner.events
        ]
        return [event.payload for _, event in sorted(entries, key=lambda entry: entry[0])]


def lookups(supervisor: SupervisorDouble) -> list[str]:
    from airflow.sdk.execution_time.comms import GetConnection

    return [m.conn_id for m in supervisor.asked if isinstance(m, GetConnection)]


async def test_triggers_starting_together_look_the_connection_up_once(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """12 triggers started while the lookup is in flight, 4 more moments later: one lookup."""
    batches = [(await asyncio.to_thread(create_batch, emulator, tmp_path, 1)).id for _ in range(16)]
    ti = task_instance()
    connection = served_connection(emulator)
    async with supervisor_for(ti, connection=connection, connection_delay=0.5) as supervisor:
        runner = Runner()
        await runner.start(batches[:12], ti)
        await asyncio.sleep(1.0)  # resolved by now, within connection_cache.REUSE_SECONDS
        assert lookups(supervisor) == [CONN_ID]
        await runner.start(batches[12:], ti)
        events = await runner.events(16)
        assert lookups(supervisor) == [CONN_ID]
    assert [(e["status"], e["batch_id"]) for e in events] == [("success", b) for b in batches]


async def test_an_edited_connection_reaches_triggers_started_after_the_window(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_cache, "REUSE_SECONDS", 0.5)
    first, second = [(await asyncio.to_thread(create_batch, emulator, tmp_path, 1)).id for _ in range(2)]
    ti = task_instance()
    async with supervisor_for(ti, connection=served_connection(emulator)) as supervisor:
        runner = Runner()
        await runner.start([first], ti)
        assert (await runner.events(1))[0]["status"] == "success"
        # The user rotates the key in the Connection; the next trigger starts after the window.
        supervisor.connection = served_connection(emulator, key="sk-rotated-elsewhere")
        await asyncio.sleep(0.6)
        await runner.start([second], ti)
        events = await runner.events(2)
        assert lookups(supervisor) == [CONN_ID, CONN_ID]
    assert events[1]["status"] == "error" and "HTTP 401" in events[1]["message"], events[1]
    assert "sk-rotated-elsewhere" not in json.dumps(events)


async def test_a_failed_lookup_is_not_reused(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A missing Connection: each trigger asks again and reports it; once defined, the next one runs."""
    batches = [(await asyncio.to_thread(create_batch, emulator, tmp_path, 1)).id for _ in range(3)]
    ti = task_instance()
    async with supervisor_for(ti, connection=None) as supervisor:
        runner = Runner()
        await runner.start(batches[:1], ti)
        await runner.events(1)
        await runner.start(batches[1:2], ti)
        await runner.events(2)
        supervisor.connection = served_connection(emulator)
        await runner.start(batches[2:], ti)
        events = await runner.events(3)
        assert lookups(supervisor) == [CONN_ID] * 3
    assert [e["status"] for e in events] == ["error", "error", "success"], events
    assert all(CONN_ID in e["message"] for e in events[:2]), events
