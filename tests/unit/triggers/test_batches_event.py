"""parse_batches_event: what BatchesStatusTrigger sends is accepted, anything else is refused with a clear error.

The batches are the recorded answers of the real API (tests/fixtures), summarised by the
same ``batch_summary`` the trigger uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.exceptions import BatchEventError
from airflow_provider_qwenbatch.summary import batch_summary
from airflow_provider_qwenbatch.triggers.batches import parse_batches_event
from tests.recordings import load


def _summary(recording: str, batch_id: str) -> dict[str, Any]:
    batch = Batch.model_validate({**load(recording).json(), "id": batch_id})
    return batch_summary(batch)


def valid() -> dict[str, Any]:
    """A ``done`` event woken by the first end: b1 completed, b2 in progress, b3 not read yet."""
    return {
        "status": "done",
        "batch_ids": ["b1", "b2", "b3"],
        "ended": ["b1"],
        "batches": {
            "b1": _summary("get-completed-batch", "b1"),
            "b2": _summary("get-inprogress-batch", "b2"),
        },
        "message": "1/3 batches ended (1 completed); lines 3/5 (60.0%), failed 0",
    }


def test_a_valid_event_is_accepted() -> None:
    payload = parse_batches_event(valid())
    assert payload.status == "done"
    assert payload.ended == ["b1"] and payload.unfinished == ["b2", "b3"]
    assert payload.batches["b1"]["status"] == "completed"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        target[last] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.pop(key) and None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_set("status", "success"), "status"),  # a single-batch trigger's status
        (_drop("batch_ids"), "batch_ids"),
        (_set("batch_ids", []), "batch_ids"),
        (_set("ended", ["b1", "b9"]), "ids not among batch_ids: ['b9']"),
        (_set("batches.b9", {"batch_id": "b9", "status": "completed"}), "ids not among batch_ids: ['b9']"),
        (_set("batches.b2.batch_id", "b1"), "batches['b2'] is the summary of 'b1'"),
        (_set("ended", ["b2"]), "ended batch 'b2' has no terminal summary (status 'in_progress')"),
        (_set("ended", ["b3"]), "ended batch 'b3' has no terminal summary (status None)"),
        (_set("ended", []), "a 'done' event with no ended batch"),
        (_set("batches", ["b1"]), "batches"),
    ],
)
def test_a_bad_event_is_refused_naming_what_is_wrong(
    change: Callable[[dict[str, Any]], None], needle: str
) -> None:
    event = copy.deepcopy(valid())
    change(event)
    with pytest.raises(BatchEventError, match="unexpected trigger event") as info:
        parse_batches_event(event)
    assert needle in str(info.value)


@pytest.mark.parametrize("event", [None, "done", ["done"], {"status": "done"}])
def test_not_an_event_is_refused(event: Any) -> None:
    with pytest.raises(BatchEventError, match="unexpected trigger event"):
        parse_batches_event(event)


def test_a_timeout_or_error_may_have_no_ended_batch() -> None:
    for status in ("timeout", "error"):
        event = {**valid(), "status": status, "ended": []}
        assert parse_batches_event(event).unfinished == ["b1", "b2", "b3"]
