"""What differs between Airflow minors, in one place.

So far: the task-instance state query of the trigger's kill decision (see
:mod:`airflow_provider_qwenbatch.triggers.kill_decision`), and the greenback portal a task of
our own needs in the triggerer.
"""

from __future__ import annotations

import os
from typing import Any


class TaskStateUnavailable(RuntimeError):
    """The task instance's state cannot be asked here (no supervisor, unexpected answer)."""


def _supervisor_comms() -> Any:
    """The triggerer runner's comms channel to its supervisor (set by ``TriggerRunner.init_comms``)."""
    from airflow.sdk.execution_time import task_runner

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None or not hasattr(comms, "asend"):
        raise TaskStateUnavailable("no supervisor comms in this process (not inside a triggerer)")
    return comms


async def _asend_from_loop(msg: Any) -> Any:
    """Send one request to the triggerer's supervisor from the triggerer's own event loop.

    Airflow 3.3: ``TriggerCommsDecoder.asend`` writes the frame and awaits a future that the
    comms reader task resolves by request id, on this loop: no thread, and many triggers may
    ask at once (requests are pipelined). The alternatives are worse here: ``send()`` called
    from the loop needs a greenback portal, which exists per task and our shielded check task
    has none; ``sync_to_async(send)`` works on 3.3.2 (``send`` bridges back to the loop with
    ``run_coroutine_threadsafe``) but parks a worker thread per call, and a kill storm of many
    triggers would queue on the default executor; on 3.0/3.1 ``send`` is
    ``async_to_sync(asend)`` and from a worker thread fails outright.

    Airflow 3.0-3.2 (not verified yet): the single place to adapt for those minors.
    """
    return await _supervisor_comms().asend(msg)


async def aget_task_instance_state(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """The state of one task instance, asked through the triggerer's supervisor (never the DB).

    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param task_id: the task id.
    :param map_index: the map index (``-1`` when not mapped).
    :return: the state (``"deferred"``, ``"failed"``...), ``None`` when the task instance has
        no state (cleared) or no longer exists (run deleted).
    :raises TaskStateUnavailable: when there is no supervisor to ask or its answer is not a state.
    """
    from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

    answer = await _asend_from_loop(
        GetTaskStates(dag_id=dag_id, task_ids=[task_id], run_ids=[run_id], map_index=map_index)
    )
    if not isinstance(answer, TaskStatesResult):
        raise TaskStateUnavailable(f"unexpected answer to GetTaskStates: {type(answer).__name__}")
    # The execution API keys unmapped task instances by task id, mapped ones by "<task_id>_<index>".
    key = task_id if map_index < 0 else f"{task_id}_{map_index}"
    state = answer.task_states.get(run_id, {}).get(key)
    if state is None:
        return None
    return str(getattr(state, "value", state))


async def ensure_sync_sdk_portal() -> None:
    """Let sync task-SDK calls (``mask_secret``...) work from a task we created in the triggerer.

    Airflow 3.3's triggerer answers a sync SDK call made on its event loop through a greenback
    portal, which exists per task: ``run_trigger`` opens one for the trigger's own task only,
    so a task of ours (the shielded Connection lookup) opens its own, the same way and under the
    same switch (``AIRFLOW_DISABLE_GREENBACK_PORTAL``). Outside a triggerer it costs nothing.
    """
    if os.environ.get("AIRFLOW_DISABLE_GREENBACK_PORTAL", "").lower() == "true":
        return
    try:
        import greenback
    except ImportError:  # not a triggerer that uses greenback
        return
    await greenback.ensure_portal()
