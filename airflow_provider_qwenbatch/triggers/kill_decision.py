"""Whether a cancelled trigger's task was really killed by a user: the one rule, asked by every kill path.

A cancelled ``run()`` (or an ``on_kill()`` call) does not prove a kill:

* a triggerer restart or shutdown cancels without the ``__airflow_user_action__`` marker;
* with several triggerers, Airflow 3.3.x cancels a trigger *with* the marker (and calls
  ``on_kill``) when it was reassigned to another triggerer after this one's heartbeat lapsed
  (``TriggerRunnerSupervisor.update_triggers``, apache/airflow#73454). The task instance is
  then still DEFERRED, watched by the other triggerer.

After a real user kill (mark the task or its run failed or successful, clear it) the task
instance is no longer DEFERRED. So: no marker (on Airflow >= 3.3, which marks user kills) is
never a kill; with the marker, the task instance's state decides (asked through the
triggerer's supervisor, :func:`~airflow_provider_qwenbatch.compat.aget_task_instance_state`).
A state that does not come in time is UNKNOWN: the caller leaves the batch running for now and
may ask again (:func:`settle_kill`), because cancelling a healthy batch cannot be undone while
a batch left running a little longer only costs a little.

Not covered: a task cleared and deferred again (a new try, a new trigger) before the state is
read would look DEFERRED; that takes a scheduler loop, a worker start and a submit, much longer
than the seconds the check takes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger

from airflow_provider_qwenbatch.compat import aget_task_instance_state

USER_ACTION_MARKER = "__airflow_user_action__"
# How long the kill path waits for the task state before calling the answer UNKNOWN. The state
# is one indexed read through the supervisor (milliseconds when warm); the triggerer cuts
# on_kill short after ~1 s anyway (it re-cancels), the decision goes on in its own task.
KILL_CHECK_WAIT = 3.0
# How long settle_kill goes on asking after an UNKNOWN, and how often.
KILL_CHECK_PATIENCE = 60.0
KILL_CHECK_RETRY = 2.0

StateQuery = Callable[[str, str, str, int], Coroutine[Any, Any, str | None]]

# Strong references to state queries in flight (the loop keeps only weak ones). Each ask sends
# its own request: one lost or stalled must not hold up the next.
_QUERIES: set[asyncio.Task[str | None]] = set()
_WARMED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_WARMING: set[asyncio.Task[Any]] = set()


class Verdict(enum.Enum):
    """What a trigger cancellation was."""

    USER_KILL = "user_kill"
    NOT_A_KILL = "not_a_kill"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class KillDecision:
    """A verdict and why, for the log.

    :param verdict: the verdict.
    :param reason: what it rests on, in words.
    """

    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class TaskInstanceRef:
    """Which task instance a trigger serves.

    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param task_id: the task id.
    :param map_index: the map index (``-1`` when not mapped).
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @classmethod
    def of(cls, task_instance: Any) -> TaskInstanceRef | None:
        """The identity of a trigger's ``task_instance`` (``None`` when the trigger has none).

        :param task_instance: what the triggerer set on the trigger (a ``RuntimeTaskInstance``
            or the workload's task instance).
        """
        if task_instance is None:
            return None
        map_index = getattr(task_instance, "map_index", -1)
        return cls(
            dag_id=task_instance.dag_id,
            run_id=task_instance.run_id,
            task_id=task_instance.task_id,
            map_index=-1 if map_index is None else int(map_index),
        )

    def __str__(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}"


def triggerer_marks_user_kills() -> bool:
    """Whether this Airflow cancels user kills with the marker and calls ``on_kill`` (3.3 and later)."""
    return "on_kill" in BaseTrigger.__dict__


def decide_from_marker(
    ti: TaskInstanceRef | None, marker: object, *, marks_user_kills: bool
) -> KillDecision | None:
    """The verdict when the cancel marker alone settles it; ``None`` when the task state must decide.

    :param ti: the trigger's task instance.
    :param marker: the first argument of the ``CancelledError`` (``None`` when it had none).
    :param marks_user_kills: whether this Airflow marks user kills (see :func:`triggerer_marks_user_kills`).
    """
    if marker != USER_ACTION_MARKER and marks_user_kills:
        return KillDecision(
            Verdict.NOT_A_KILL, "cancelled without the user-action marker (triggerer restart)"
        )
    if ti is None:
        if marker == USER_ACTION_MARKER:
            # Not a task's trigger (none of ours in a real triggerer): nothing else to go by.
            return KillDecision(Verdict.USER_KILL, "user-action marker and no task instance to check")
        return KillDecision(Verdict.NOT_A_KILL, "cancelled without a marker and no task instance to check")
    return None


def decide_from_state(ti: TaskInstanceRef, state: str | None) -> KillDecision:
    """The verdict from the task instance's state, read after the cancel.

    :param ti: the trigger's task instance.
    :param state: its state (``None``: no state, or no such task instance any more).
    """
    if state == "deferred":
        return KillDecision(
            Verdict.NOT_A_KILL,
            f"task instance {ti} is still deferred: its trigger was reassigned to another triggerer"
            " (or this triggerer is stopping)",
        )
    shown = "gone or without a state (cleared or deleted)" if state is None else state
    return KillDecision(Verdict.USER_KILL, f"task instance {ti} is {shown}")


async def _ask(ti: TaskInstanceRef, query: StateQuery) -> str | None:
    # Its own referenced task: the triggerer re-cancels the caller about once a second, which
    # must not drop a request the supervisor is answering (the caller awaits it shielded).
    task = asyncio.get_running_loop().create_task(query(ti.dag_id, ti.run_id, ti.task_id, ti.map_index))
    _QUERIES.add(task)
    task.add_done_callback(_query_done)
    return await asyncio.shield(task)


def _query_done(task: asyncio.Task[str | None]) -> None:
    _QUERIES.discard(task)
    if not task.cancelled():
        task.exception()  # an answer nobody waits for any more (timed out) is not an error to report


async def decide_kill(
    ti: TaskInstanceRef | None,
    marker: object,
    *,
    wait: float | None = None,
    marks_user_kills: bool | None = None,
    query: StateQuery | None = None,
) -> KillDecision:
    """Decide once, within ``wait`` seconds, whether a cancelled trigger's task was killed by a user.

    :param ti: the trigger's task instance (``TaskInstanceRef.of(trigger.task_instance)``).
    :param marker: the first argument of the ``CancelledError`` (``None`` when it had none).
    :param wait: seconds to wait for the task state before answering UNKNOWN (default
        :data:`KILL_CHECK_WAIT`).
    :param marks_user_kills: whether this Airflow marks user kills (default: detected).
    :param query: how to read the task state (default: through the triggerer's supervisor).
    """
    wait = KILL_CHECK_WAIT if wait is None else wait
    query = aget_task_instance_state if query is None else query
    if marks_user_kills is None:
        marks_user_kills = triggerer_marks_user_kills()
    settled = decide_from_marker(ti, marker, marks_user_kills=marks_user_kills)
    if settled is not None:
        return settled
    assert ti is not None  # decide_from_marker settles every case without one
    try:
        state = await asyncio.wait_for(_ask(ti, query), wait)
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes on Python 3.10
        return KillDecision(
            Verdict.UNKNOWN, f"the state of task instance {ti} did not come within {wait:g} s"
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return KillDecision(Verdict.UNKNOWN, f"cannot read the state of task instance {ti}: {exc}")
    return decide_from_state(ti, state)


async def settle_kill(
    ti: TaskInstanceRef | None,
    marker: object,
    *,
    logger: logging.Logger | Any,
    what: str,
    wait: float | None = None,
    patience: float | None = None,
    retry: float | None = None,
    marks_user_kills: bool | None = None,
    query: StateQuery | None = None,
) -> KillDecision:
    """Decide, asking again after an UNKNOWN for up to ``patience`` seconds; logs each step.

    Run it in a task of its own (referenced, awaited shielded): it may outlive ``on_kill``.

    :param ti: the trigger's task instance.
    :param marker: the first argument of the ``CancelledError``.
    :param logger: where to log the decision.
    :param what: what a kill would cancel, for the log (e.g. ``"batch batch_1"``).
    :param wait: seconds each ask may take (default :data:`KILL_CHECK_WAIT`).
    :param patience: seconds to go on asking after the first UNKNOWN (default :data:`KILL_CHECK_PATIENCE`).
    :param retry: seconds between asks (default :data:`KILL_CHECK_RETRY`).
    :param marks_user_kills: whether this Airflow marks user kills (default: detected).
    :param query: how to read the task state (default: through the triggerer's supervisor).
    """
    patience = KILL_CHECK_PATIENCE if patience is None else patience
    retry = KILL_CHECK_RETRY if retry is None else retry
    decision = await decide_kill(ti, marker, wait=wait, marks_user_kills=marks_user_kills, query=query)
    if decision.verdict is Verdict.UNKNOWN:
        logger.warning(
            "Cannot tell yet whether the task was killed (%s); %s left running for now, "
            "asking again for up to %g s",
            decision.reason,
            what,
            patience,
        )
        give_up = time.monotonic() + patience
        while decision.verdict is Verdict.UNKNOWN and time.monotonic() < give_up:
            await asyncio.sleep(retry)
            decision = await decide_kill(
                ti, marker, wait=wait, marks_user_kills=marks_user_kills, query=query
            )
    if decision.verdict is Verdict.USER_KILL:
        logger.info("Task killed (%s): cancelling %s", decision.reason, what)
    elif decision.verdict is Verdict.NOT_A_KILL:
        logger.warning(
            "Trigger cancelled, not a kill (%s): reassigned, %s left running", decision.reason, what
        )
    else:
        logger.warning(
            "Still cannot tell whether the task was killed after %g s (%s): %s left running",
            patience,
            decision.reason,
            what,
        )
    return decision


def warm_up(ti: TaskInstanceRef | None, query: StateQuery | None = None) -> None:
    """Ask one task state in the background, once per event loop, so a kill later finds the path warm.

    The first request of a triggerer to its supervisor can take seconds (the supervisor builds
    its in-process execution API on first use); the kill path has no seconds to spare.

    :param ti: a task instance to ask about (its answer is not used).
    :param query: how to read the task state (default: through the triggerer's supervisor).
    """
    if ti is None:
        return
    ask_state = aget_task_instance_state if query is None else query
    loop = asyncio.get_running_loop()
    if loop in _WARMED:
        return
    _WARMED.add(loop)

    async def ask() -> None:
        try:
            await ask_state(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        except Exception as exc:  # the kill path reports what is wrong, with its own reason
            logging.getLogger(__name__).debug("Warming the task state query failed: %s", exc)

    task = loop.create_task(ask())
    _WARMING.add(task)
    task.add_done_callback(_WARMING.discard)
