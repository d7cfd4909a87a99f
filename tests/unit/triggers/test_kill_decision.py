"""The kill decision: a cancelled trigger's task was killed by a user only when it left DEFERRED.

The state query here is a double that answers only for the exact task instance it was given
(anything else is "no such task instance", which reads as a kill: a double that ignored its
arguments could not hide a wrong identity behind the right answer).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from airflow_provider_qwenbatch.compat import TaskStateUnavailable
from airflow_provider_qwenbatch.triggers.kill_decision import (
    USER_ACTION_MARKER,
    KillDecision,
    TaskInstanceRef,
    Verdict,
    decide_from_marker,
    decide_from_state,
    decide_kill,
    settle_kill,
)

TI = TaskInstanceRef(dag_id="d", run_id="manual__1", task_id="submit", map_index=2)


class StateTable:
    """Answers the state of TI only; records every question."""

    def __init__(self, *answers: Any, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.asked: list[tuple[str, str, str, int]] = []

    async def __call__(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
        self.asked.append((dag_id, run_id, task_id, map_index))
        await asyncio.sleep(self.delay)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if (dag_id, run_id, task_id, map_index) != (TI.dag_id, TI.run_id, TI.task_id, TI.map_index):
            return None
        return answer  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("marker", "marks", "ti", "expected"),
    [
        (None, True, TI, Verdict.NOT_A_KILL),  # 3.3+: a restart carries no marker
        ("EOF - shutting down", True, TI, Verdict.NOT_A_KILL),
        (USER_ACTION_MARKER, True, TI, None),  # a kill or a reassignment: the state decides
        (None, False, TI, None),  # before 3.3 a kill may carry no marker: the state decides
        (USER_ACTION_MARKER, True, None, Verdict.USER_KILL),  # no task instance: the marker is all there is
        (None, False, None, Verdict.NOT_A_KILL),
    ],
)
def test_marker(marker: object, marks: bool, ti: TaskInstanceRef | None, expected: Verdict | None) -> None:
    decision = decide_from_marker(ti, marker, marks_user_kills=marks)
    assert (decision.verdict if decision else None) is expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("deferred", Verdict.NOT_A_KILL),
        ("failed", Verdict.USER_KILL),
        ("success", Verdict.USER_KILL),
        ("up_for_retry", Verdict.USER_KILL),
        ("restarting", Verdict.USER_KILL),
        (None, Verdict.USER_KILL),  # cleared, or the run was deleted
    ],
)
def test_state(state: str | None, expected: Verdict) -> None:
    decision = decide_from_state(TI, state)
    assert decision.verdict is expected
    assert str(TI) in decision.reason


async def test_deferred_task_instance_is_not_a_kill_and_the_query_gets_the_identity() -> None:
    table = StateTable("deferred")
    decision = await decide_kill(TI, USER_ACTION_MARKER, marks_user_kills=True, query=table)
    assert decision.verdict is Verdict.NOT_A_KILL and "reassigned" in decision.reason
    assert table.asked == [("d", "manual__1", "submit", 2)]


async def test_wrong_identity_reads_as_gone() -> None:
    other = TaskInstanceRef(dag_id="d", run_id="manual__1", task_id="submit", map_index=3)
    decision = await decide_kill(
        other, USER_ACTION_MARKER, marks_user_kills=True, query=StateTable("deferred")
    )
    assert decision.verdict is Verdict.USER_KILL


async def test_no_marker_on_33_asks_nothing() -> None:
    table = StateTable("failed")
    decision = await decide_kill(TI, None, marks_user_kills=True, query=table)
    assert decision.verdict is Verdict.NOT_A_KILL and table.asked == []


@pytest.mark.parametrize("failure", ["slow", "error"])
async def test_no_answer_in_time_is_unknown(failure: str) -> None:
    table = (
        StateTable("failed", delay=5.0) if failure == "slow" else StateTable(TaskStateUnavailable("no comms"))
    )
    decision = await decide_kill(TI, USER_ACTION_MARKER, wait=0.2, marks_user_kills=True, query=table)
    assert decision.verdict is Verdict.UNKNOWN
    assert ("0.2 s" if failure == "slow" else "no comms") in decision.reason


async def test_the_query_survives_the_caller_being_cancelled() -> None:
    """The triggerer re-cancels about once a second: the request in flight must not be dropped."""
    finished: list[str] = []

    async def query(*args: Any) -> str | None:
        await asyncio.sleep(0.3)
        finished.append("answered")
        return "failed"

    caller = asyncio.ensure_future(decide_kill(TI, USER_ACTION_MARKER, marks_user_kills=True, query=query))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.5)
    assert finished == ["answered"]


async def test_settle_asks_again_until_the_state_proves_a_kill(caplog: pytest.LogCaptureFixture) -> None:
    table = StateTable(
        TaskStateUnavailable("supervisor busy"), TaskStateUnavailable("supervisor busy"), "failed"
    )
    decision = await settle_kill(
        TI,
        USER_ACTION_MARKER,
        logger=logging.getLogger("t"),
        what="batch b",
        wait=0.2,
        patience=5.0,
        retry=0.05,
        marks_user_kills=True,
        query=table,
    )
    assert decision == KillDecision(Verdict.USER_KILL, f"task instance {TI} is failed")
    assert len(table.asked) == 3
    assert "Cannot tell yet" in caplog.text and "Task killed" in caplog.text


async def test_settle_gives_up_and_leaves_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    decision = await settle_kill(
        TI,
        USER_ACTION_MARKER,
        logger=logging.getLogger("t"),
        what="batch b",
        wait=0.05,
        patience=0.3,
        retry=0.05,
        marks_user_kills=True,
        query=StateTable(TaskStateUnavailable("down")),
    )
    assert decision.verdict is Verdict.UNKNOWN
    assert "Still cannot tell" in caplog.text and "batch b left running" in caplog.text


def test_ref_of_a_task_instance() -> None:
    class Ti:
        dag_id, run_id, task_id, map_index = "d", "r", "t", None

    assert TaskInstanceRef.of(Ti()) == TaskInstanceRef("d", "r", "t", -1)
    assert TaskInstanceRef.of(None) is None


async def test_state_query_outside_a_triggerer_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time import task_runner

    from airflow_provider_qwenbatch.compat import aget_task_instance_state

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)
    with pytest.raises(TaskStateUnavailable, match="no supervisor comms"):
        await aget_task_instance_state("d", "r", "t", -1)
