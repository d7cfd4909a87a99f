"""The triggerer supervisor's end of Airflow's real trigger comms channel, for in-process trigger tests.

The runner's end is Airflow's own ``TriggerCommsDecoder`` (installed as
``task_runner.SUPERVISOR_COMMS``, as ``TriggerRunner.init_comms`` does), over a socketpair
carrying Airflow's own frames. This end decodes each request into Airflow's message models
and answers from a table, like ``TriggerRunnerSupervisor._handle_request`` does from the DB:

* ``GetTaskStates``: the state of the one task instance it knows, only when asked for exactly
  that one (dag_id, run_ids, task_ids, map_index); anything else gets what the execution API
  gives for an unknown task instance (no states), which the trigger reads as "gone".
* ``GetConnection``: the Connection it was given (optionally after a delay).
* ``MaskSecret``: acknowledged.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import TypeAdapter

from airflow_provider_qwenbatch.compat import AIRFLOW_V_3_2_PLUS


@dataclass
class SupervisorDouble:
    """Answers the trigger runner's requests; records every one of them.

    :param dag_id: the known task instance's DAG id.
    :param run_id: its run id.
    :param task_id: its task id.
    :param map_index: its map index.
    :param state: its state (``None``: no state).
    :param state_delay: seconds before each state answer.
    :param stall_states: how many of the next state requests go unanswered (a test may set it
        at any time, e.g. after the trigger's warm-up request).
    :param connection: the Connection served to ``GetConnection`` (``conn_id`` key included).
    :param connection_delay: seconds before the Connection answer.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    state: str | None = "deferred"
    state_delay: float = 0.0
    stall_states: int = 0
    connection: dict[str, Any] | None = None
    connection_delay: float = 0.0
    asked: list[Any] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> SupervisorDouble:
        from airflow.jobs.triggerer_job_runner import ToTriggerSupervisor, TriggerCommsDecoder
        from airflow.sdk.execution_time import comms, task_runner

        runner_sock, supervisor_sock = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=runner_sock)
        # socket: the sync side of the same channel (Airflow opens fd 0, a socket in a triggerer).
        self.decoder = TriggerCommsDecoder(async_writer=writer, async_reader=reader, socket=runner_sock)
        if AIRFLOW_V_3_2_PLUS:  # from 3.2 a reader task routes the answers (init_comms starts it)
            await self.decoder.start_reader()
        self._previous = getattr(task_runner, "SUPERVISOR_COMMS", None)
        task_runner.SUPERVISOR_COMMS = self.decoder
        self._reader, self._writer = await asyncio.open_connection(sock=supervisor_sock)
        self._requests = TypeAdapter(ToTriggerSupervisor)
        self._frames = msgspec.msgpack.Decoder(comms._RequestFrame)
        self._serving = asyncio.get_running_loop().create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        from airflow.sdk.execution_time import task_runner

        task_runner.SUPERVISOR_COMMS = self._previous
        for task in (self._serving, *self._tasks):
            task.cancel()
        if getattr(self.decoder, "_reader_task", None) is not None:  # 3.2+
            self.decoder._reader_task.cancel()
        self._writer.close()

    def state_requests(self) -> list[Any]:
        """The ``GetTaskStates`` requests received."""
        from airflow.sdk.execution_time.comms import GetTaskStates

        return [m for m in self.asked if isinstance(m, GetTaskStates)]

    def is_exactly_ours(self, msg: Any) -> bool:
        """Whether a ``GetTaskStates`` asks for exactly the known task instance."""
        return bool(
            msg.dag_id == self.dag_id
            and msg.run_ids == [self.run_id]
            and msg.task_ids == [self.task_id]
            and msg.map_index == self.map_index
            and msg.task_group_id is None
            and msg.logical_dates is None
        )

    async def _serve(self) -> None:
        while True:
            size = int.from_bytes(await self._reader.readexactly(4), "big")
            frame = self._frames.decode(await self._reader.readexactly(size))
            msg = self._requests.validate_python(frame.body)
            self.asked.append(msg)
            task = asyncio.get_running_loop().create_task(self._answer(frame.id, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, request_id: int, msg: Any) -> None:
        from airflow.sdk.execution_time import comms

        body: dict[str, Any] | None = None
        if isinstance(msg, comms.GetTaskStates):
            if self.stall_states > 0:
                self.stall_states -= 1
                return
            await asyncio.sleep(self.state_delay)
            states: dict[str, Any] = {}
            if self.is_exactly_ours(msg) and self.state is not None:
                key = self.task_id if self.map_index < 0 else f"{self.task_id}_{self.map_index}"
                states = {self.run_id: {key: self.state}}
            body = comms.TaskStatesResult(task_states=states).model_dump()
        elif isinstance(msg, comms.GetConnection):
            await asyncio.sleep(self.connection_delay)
            if self.connection is not None and msg.conn_id == self.connection["conn_id"]:
                body = comms.ConnectionResult(**self.connection).model_dump(by_alias=True)
            else:
                body = comms.ErrorResponse(error=comms.ErrorType.CONNECTION_NOT_FOUND).model_dump()
        elif not isinstance(msg, comms.MaskSecret):
            raise AssertionError(f"unexpected request to the supervisor: {msg!r}")
        self._writer.write(comms._ResponseFrame(id=request_id, body=body).as_bytes())
