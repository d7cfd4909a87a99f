"""What differs between Airflow minors, in one place (Airflow 3.0 to 3.3).

Everything else in the package imports these names from here, never with a ``try: import``
of its own. Each difference is gated by the Airflow version it appeared in (read in each
minor's own wheels, ``apache-airflow-core`` 3.0.6 / 3.1.8 / 3.2.2 / 3.3.2 and their task SDK):

===========================  ===============================  ===========================
name                         before                           from
===========================  ===============================  ===========================
``conf``                     ``airflow.configuration.conf``   ``airflow.sdk`` (3.2)
``BaseHook``                 ``airflow.hooks.base`` (3.0)     ``airflow.sdk`` (3.1)
``mask_secret``              ``...execution_time.secrets_     ``airflow.sdk.log`` (3.1)
                             masker`` (3.0)
``AirflowException`` & co.   ``airflow.exceptions``           ``airflow.sdk.exceptions`` (3.2)
``aread_connection``         ``sync_to_async`` (3.0)          ``BaseHook.aget_connection``
                                                              (3.1)
``determine_kwargs``         ``airflow.utils.operator_        ``airflow.sdk.bases.
                             helpers`` (3.0/3.1)              decorator`` (3.2)
===========================  ===============================  ===========================

The task-instance state query of the trigger's kill decision lives here too
(:func:`aget_task_instance_state`, see
:mod:`airflow_provider_qwenbatch.triggers.kill_decision`): the triggerer's comms channel
changed between minors; and the greenback portal a task of our own needs in the triggerer
(:func:`ensure_sync_sdk_portal`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow import __version__ as AIRFLOW_VERSION

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowException",
    "AirflowFailException",
    "AirflowSkipException",
    "BaseHook",
    "TaskDeferred",
    "TaskStateUnavailable",
    "aget_task_instance_state",
    "airflow_minor",
    "aread_connection",
    "conf",
    "dag_bag_class",
    "determine_kwargs",
    "ensure_sync_sdk_portal",
    "loaded_plugin_errors",
    "mask_secret",
]

T = TypeVar("T")


def airflow_minor(version: str = AIRFLOW_VERSION) -> tuple[int, int]:
    """``(major, minor)`` of an Airflow version string (``"3.2.2"``, ``"3.3.0rc1"``, ``"3.1.0.dev0"``).

    :param version: the version string; this Airflow's by default.
    """
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


AIRFLOW_V_3_1_PLUS = airflow_minor() >= (3, 1)
AIRFLOW_V_3_2_PLUS = airflow_minor() >= (3, 2)
AIRFLOW_V_3_3_PLUS = airflow_minor() >= (3, 3)

# mypy checks against the newest Airflow (the dev lock); the older branches are proven by
# `make test-compat` on each minor's own venv.
if TYPE_CHECKING or AIRFLOW_V_3_2_PLUS:
    from airflow.sdk import conf
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
        TaskDeferred,
    )
else:  # Airflow 3.0/3.1: the task SDK has no conf and no exceptions of its own yet.
    from airflow.configuration import conf
    from airflow.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
        TaskDeferred,
    )

if TYPE_CHECKING or AIRFLOW_V_3_1_PLUS:
    from airflow.sdk import BaseHook
else:  # Airflow 3.0: BaseHook is still core's.
    from airflow.hooks.base import BaseHook


def determine_kwargs(func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The keyword arguments of ``kwargs`` that ``func`` takes (all of them if it has ``**kwargs``).

    What TaskFlow passes a decorated function: its own ``op_kwargs`` merged into the context,
    filtered by the function's signature. Imported on first use (only a running task needs it).

    :param func: the callable.
    :param args: its positional arguments (a keyword they already bind is refused).
    :param kwargs: the candidates (the context, with ``op_kwargs`` merged in).
    """
    if TYPE_CHECKING or AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.bases.decorator import determine_kwargs as _determine_kwargs
    else:  # Airflow 3.0/3.1: still core's
        from airflow.utils.operator_helpers import determine_kwargs as _determine_kwargs
    return _determine_kwargs(func, args, kwargs)


async def aread_connection(hook: Any, conn_id: str, read: Callable[[Any], T]) -> T:
    """Look a Connection up and ``read`` it, without blocking the event loop (what a trigger needs).

    :param hook: the hook (or hook class) whose ``aget_connection`` / ``get_connection`` to use.
    :param conn_id: the Connection id.
    :param read: what to make of the Connection (it may read ``extra_dejson``).
    """
    if TYPE_CHECKING or AIRFLOW_V_3_1_PLUS:
        return read(await hook.aget_connection(conn_id))
    # Airflow 3.0: BaseHook has no aget_connection, and reading a Connection's extras masks them
    # with a sync send to the supervisor, which fails on the event loop's thread. So lookup and
    # read run in an asgiref worker thread (sync_to_async, not asyncio.to_thread: only from there
    # does the SDK's async_to_sync send run back on this loop, where the comms streams live).
    from asgiref.sync import sync_to_async

    return await sync_to_async(lambda: read(hook.get_connection(conn_id)))()


def mask_secret(secret: str, name: str | None = None) -> None:
    """Have Airflow's secrets masker redact ``secret`` from every log line from now on.

    Imported on first use: the masker is not needed to parse a DAG file.

    :param secret: the value to redact.
    :param name: the name it is known by (the masker also redacts by name).
    """
    if TYPE_CHECKING or AIRFLOW_V_3_1_PLUS:
        from airflow.sdk.log import mask_secret as _mask_secret
    else:  # Airflow 3.0
        from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask_secret
    _mask_secret(secret, name)


def dag_bag_class() -> Any:
    """Airflow's ``DagBag`` class (for scripts and tests: the package itself parses no DAG folder).

    Imported on first use; it moved from ``airflow.models.dagbag`` to
    ``airflow.dag_processing.dagbag`` in Airflow 3.2.
    """
    if TYPE_CHECKING or AIRFLOW_V_3_2_PLUS:
        from airflow.dag_processing.dagbag import DagBag
    else:  # Airflow 3.0/3.1
        from airflow.models.dagbag import DagBag
    return DagBag


def loaded_plugin_errors() -> dict[str, str]:
    """Loads Airflow's plugins (once per process) and returns their import errors, by source.

    :return: what failed to load, empty when every plugin loaded.
    """
    from airflow import plugins_manager

    if TYPE_CHECKING or AIRFLOW_V_3_2_PLUS:
        return dict(plugins_manager._get_plugins()[1])
    plugins_manager.ensure_plugins_loaded()  # Airflow 3.0/3.1: module-level state
    return dict(plugins_manager.import_errors)


# --- The kill decision's task-instance state query --------------------------------------------


class TaskStateUnavailable(RuntimeError):
    """The task instance's state cannot be asked here (no supervisor, unexpected answer)."""


# Requests to the supervisor still in flight after their caller gave up (the loop keeps only
# weak references to tasks).
_IN_FLIGHT: set[asyncio.Task[Any]] = set()


def _supervisor_comms() -> Any:
    """The triggerer runner's comms channel to its supervisor (set by ``TriggerRunner.init_comms``)."""
    from airflow.sdk.execution_time import task_runner

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None or not hasattr(comms, "asend"):
        raise TaskStateUnavailable("no supervisor comms in this process (not inside a triggerer)")
    return comms


async def _asend_from_loop(msg: Any) -> Any:
    """Send one request to the triggerer's supervisor from the triggerer's own event loop.

    ``TriggerCommsDecoder.asend`` is the one path that works on every minor, awaited on the
    triggerer's loop (where the comms streams live); what differs is what a cancellation of it
    does:

    * Airflow 3.2 and 3.3: ``asend`` writes the frame and awaits a future that the comms reader
      task resolves by request id; many triggers may ask at once and a cancelled ask only
      drops its future. ``send()`` from the loop needs a greenback portal (per task; a
      shielded check task has none), and ``sync_to_async(send)`` parks a worker thread per
      call.
    * Airflow 3.0 and 3.1: ``asend`` takes an ``asyncio.Lock``, writes the frame and reads
      the next frame itself. Cancelled between the write and the read, it leaves the reply
      unread, and the trigger runner's next request (its state sync) reads that reply and
      fails with "Response read out of order". ``send()`` is ``async_to_sync(asend)``: from a
      worker thread (``asyncio.to_thread``) it runs on a new loop against this loop's streams
      and fails. So the request runs as its own task, shielded: the caller may stop waiting
      (re-cancelled by the triggerer about once a second, or timed out) but the request
      always reads its own reply.
    """
    comms = _supervisor_comms()
    # Shielded on every minor: on 3.2+ a cancelled ask would only waste the answer, but the
    # triggerer's re-cancel must not keep the kill decision from ever getting one.
    request = asyncio.ensure_future(comms.asend(msg))
    _IN_FLIGHT.add(request)
    request.add_done_callback(_IN_FLIGHT.discard)
    return await asyncio.shield(request)


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
