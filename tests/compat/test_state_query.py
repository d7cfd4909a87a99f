"""The kill decision's task-state query over the triggerer's real comms channel, on every minor.

The trigger runner side is Airflow's own ``TriggerCommsDecoder`` (as ``TriggerRunner.init_comms``
builds it, reader task started on 3.2+), on one end of a socket pair; the other end is a
supervisor that decodes each request frame with Airflow's own frame classes, checks it is the
``GetTaskStates`` it should be, answers after a delay with Airflow's ``TaskStatesResult``, and
records the order. What the triggerer does around a kill is replayed: the asking task is
cancelled again and again (the triggerer re-cancels about once a second on 3.2), and the
runner's next request must still get its own answer (on 3.0/3.1 an abandoned read made it
fail with "Response read out of order").
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_qwenbatch.compat import AIRFLOW_V_3_2_PLUS, aget_task_instance_state


@dataclass
class FakeSupervisor:
    """The supervisor end: answers GetTaskStates from ``states`` after ``delay`` seconds."""

    sock: socket.socket
    states: dict[str, dict[str, str | None]]
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def serve(self) -> None:
        from airflow.sdk.execution_time.comms import TaskStatesResult, _RequestFrame, _ResponseFrame
        from msgspec.msgpack import Decoder

        decoder = Decoder(_RequestFrame)
        while True:
            try:
                head = self._exactly(4)
                frame = decoder.decode(self._exactly(int.from_bytes(head, "big")))
            except (EOFError, OSError):
                return
            body = frame.body or {}
            self.requests.append(body)
            if body.get("type") != "GetTaskStates":
                self.errors.append(f"unexpected request {body!r}")
                continue
            time.sleep(self.delay)
            wanted = {
                run_id: {k: v for k, v in tasks.items() if k.split("_")[0] in (body.get("task_ids") or [])}
                for run_id, tasks in self.states.items()
                if run_id in (body.get("run_ids") or [])
            }
            answer = TaskStatesResult(task_states=wanted)
            # Recorded before sending: the runner may read the answer and the test check
            # ``answered`` before this thread runs again (a CI run failed on that race).
            self.answered.append(frame.id)
            self.sock.sendall(_ResponseFrame(id=frame.id, body=answer.model_dump()).as_bytes())

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data


@pytest.fixture
async def supervisor(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSupervisor]:
    from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
    from airflow.sdk.execution_time import task_runner

    runner_end, supervisor_end = socket.socketpair()
    fake = FakeSupervisor(
        sock=supervisor_end,
        states={"run_1": {"wait": "failed", "other": "deferred", "mapped_3": "deferred"}},
    )
    thread = threading.Thread(target=fake.serve, daemon=True)
    thread.start()
    reader, writer = await asyncio.open_connection(sock=runner_end)
    # socket= only because the default is fd 0 (the real triggerer's stdin is its socket).
    comms = TriggerCommsDecoder(async_writer=writer, async_reader=reader, socket=runner_end)
    if AIRFLOW_V_3_2_PLUS:
        await comms.start_reader()  # what init_comms does after the first message from 3.2 on
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    yield fake
    writer.close()
    supervisor_end.close()
    thread.join(timeout=5)
    assert fake.errors == []


async def test_reads_the_task_state_through_the_supervisor(supervisor: FakeSupervisor) -> None:
    assert await aget_task_instance_state("dag", "run_1", "wait", -1) == "failed"
    assert await aget_task_instance_state("dag", "run_1", "mapped", 3) == "deferred"
    assert await aget_task_instance_state("dag", "run_1", "gone", -1) is None
    first = supervisor.requests[0]
    assert (first["dag_id"], first["task_ids"], first["run_ids"], first["map_index"]) == (
        "dag",
        ["wait"],
        ["run_1"],
        -1,
    )
    assert supervisor.requests[1]["map_index"] == 3


async def test_recancelled_ask_still_gets_its_answer_and_keeps_the_channel_in_order(
    supervisor: FakeSupervisor,
) -> None:
    supervisor.delay = 1.5  # slower than the triggerer's ~1 s re-cancel
    ask = asyncio.ensure_future(aget_task_instance_state("dag", "run_1", "wait", -1))
    await asyncio.sleep(0.3)
    for _ in range(2):  # the triggerer cancelling the asking task again
        ask.cancel()
        await asyncio.sleep(0.5)
    with pytest.raises(asyncio.CancelledError):
        await ask
    # The runner's next request (its state sync in a real triggerer) gets its own answer.
    supervisor.delay = 0.0
    assert await asyncio.wait_for(aget_task_instance_state("dag", "run_1", "other", -1), 10) == "deferred"
    assert len(supervisor.answered) == 2


async def test_caller_may_stop_waiting_and_ask_again(supervisor: FakeSupervisor) -> None:
    supervisor.delay = 1.0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(aget_task_instance_state("dag", "run_1", "wait", -1), 0.2)
    assert await asyncio.wait_for(aget_task_instance_state("dag", "run_1", "wait", -1), 10) == "failed"
