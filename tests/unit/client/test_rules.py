"""The rules decided once: completion window, batch tag, status sets."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from airflow_provider_qwenbatch.client import (
    BatchStatus,
    BatchTag,
    find_tags,
    parse_completion_window,
    run_tag,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
        ("14d", timedelta(days=14)),
        ("336h", timedelta(hours=336)),
        ("48h", timedelta(hours=48)),
    ],
)
def test_valid_completion_windows(value: str, expected: timedelta) -> None:
    assert parse_completion_window(value) == expected


@pytest.mark.parametrize(
    "value", ["25x", "12h", "400h", "0h", "", "15d", "337h", "23h", "24", "h", "-24h", "24 h", "1.5d", "24H"]
)
def test_invalid_completion_windows_name_the_value(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_completion_window(value)


@pytest.mark.parametrize("value", ["400h", "15d", "12h"])
def test_out_of_range_windows_say_the_range(value: str) -> None:
    with pytest.raises(ValueError, match="24h to 336h"):
        parse_completion_window(value)


# ---- BatchTag -----------------------------------------------------------------------------

TAG = BatchTag("etl_daily", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch", -1)


def test_tag_is_deterministic_and_36_chars() -> None:
    again = BatchTag("etl_daily", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch", -1)
    assert TAG.value == again.value
    assert len(TAG.value) == 36  # af- + 12 hex run part + - + 20 hex task part
    assert TAG.value.startswith("af-")
    assert find_tags(TAG.value) == [TAG.value]


def test_tag_has_no_try_number() -> None:
    # The identity is (dag, run, task, map index): a retry computes the same tag by construction.
    with pytest.raises(TypeError):
        BatchTag("etl_daily", "r", "t", -1, 2)  # type: ignore[call-arg]
    assert {f for f in BatchTag.__dataclass_fields__} == {"dag_id", "run_id", "task_id", "map_index"}


@pytest.mark.parametrize(
    "other",
    [
        BatchTag("etl_daily", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch", 0),
        BatchTag("etl_daily", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch", 1),
        BatchTag("etl_daily", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch2", -1),
        BatchTag("etl_daily", "scheduled__2026-04-18T00:00:00+00:00", "submit_batch", -1),
        BatchTag("etl_daily2", "scheduled__2026-04-17T00:00:00+00:00", "submit_batch", -1),
    ],
    ids=["map0", "map1", "task", "run", "dag"],
)
def test_tag_differs_by_each_part(other: BatchTag) -> None:
    assert other.value != TAG.value
    assert not TAG.matches(other.ds_name())
    assert not other.matches(TAG.ds_name())


def test_tag_parts_do_not_run_together() -> None:
    assert BatchTag("ab", "c", "t").value != BatchTag("a", "bc", "t").value


def test_run_tag_is_in_every_task_tag_of_the_run() -> None:
    prefix = run_tag(TAG.dag_id, TAG.run_id)
    tags = [BatchTag(TAG.dag_id, TAG.run_id, f"task_{i}", m) for i in range(5) for m in (-1, 0, 7)]
    assert all(prefix in t.value for t in tags)
    assert all(prefix in t.ds_name("a user name") for t in tags)
    assert len({t.value for t in tags}) == len(tags)
    other_run = BatchTag(TAG.dag_id, "manual__2026-04-17", "task_0")
    assert prefix not in other_run.value


def test_ds_name_fits_100_chars_and_keeps_the_tag() -> None:
    long_ids = BatchTag("d" * 250, "r" * 250, "t" * 250, 12345)
    for user_name in (None, "", "short name", "x" * 75, "x" * 76, "y" * 250, "测试任务" * 60):
        name = long_ids.ds_name(user_name)
        assert len(name) <= 100, (user_name, len(name))
        assert long_ids.value in name
        assert long_ids.matches(name)
        assert find_tags(name) == [long_ids.value]
    assert long_ids.ds_name("short name").startswith("short name")
    assert long_ids.ds_name(None) == long_ids.value


def test_matches_rejects_another_tasks_tag_and_bad_input() -> None:
    other = BatchTag(TAG.dag_id, TAG.run_id, "other_task")
    assert TAG.matches(TAG.ds_name("mine"))
    assert not TAG.matches(other.ds_name("mine"))
    assert not TAG.matches(None)
    assert not TAG.matches("")
    assert not TAG.matches(TAG.value[:-1])  # a substring match of the list filter is not enough
    assert not TAG.matches("测试任务")


# ---- BatchStatus --------------------------------------------------------------------------

TERMINAL = {"completed", "failed", "expired", "cancelled"}
IN_FLIGHT = {"validating", "in_progress", "finalizing", "cancelling"}


def test_status_sets_are_exactly_the_api_facts() -> None:
    assert {s.value for s in BatchStatus} == TERMINAL | IN_FLIGHT
    assert {s.value for s in BatchStatus.terminal()} == TERMINAL
    assert {s.value for s in BatchStatus.in_flight()} == IN_FLIGHT
    assert {s.value for s in BatchStatus.failed_terminal()} == TERMINAL - {"completed"}


@pytest.mark.parametrize("status", list(BatchStatus), ids=str)
def test_each_status(status: BatchStatus) -> None:
    assert status.is_terminal is (status.value in TERMINAL)
    assert status.is_in_flight is (status.value in IN_FLIGHT)
    assert status.is_success is (status.value == "completed")
    assert BatchStatus(status.value) is status
    assert str(status) == status.value


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="paused"):
        BatchStatus("paused")
