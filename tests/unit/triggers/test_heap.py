"""heap: the start-up heap and the running triggers' state leave the collector's walks; what ended is collected."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_qwenbatch.triggers import heap


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(heap, "_frozen", False)
    monkeypatch.setattr(heap, "_running", 0)
    monkeypatch.setattr(heap, "_running_at_freeze", 0)
    monkeypatch.setattr(heap, "_ended_since_freeze", 0)
    monkeypatch.setattr(heap, "_settle_pending", False)
    monkeypatch.setattr(heap, "_settled_at", 0.0)
    gc.unfreeze()
    yield
    gc.unfreeze()  # leave the test process as it was


def test_freezes_what_is_alive_once_per_process(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    startup = [{"module state": i} for i in range(1000)]
    assert heap.freeze_startup_heap() is True
    frozen = gc.get_freeze_count()
    assert frozen >= len(startup)
    # A full collection no longer walks them: only what was created since is tracked.
    assert not any(obj is startup for obj in gc.get_objects(generation=2))
    later = [{"trigger state": i} for i in range(10)]
    assert heap.freeze_startup_heap() is False
    # Nothing new is frozen: `later` is still in a collected generation (frozen objects are not
    # listed), and the count did not grow (it may shrink: a frozen object freed leaves it).
    assert any(obj is later for obj in gc.get_objects())
    assert gc.get_freeze_count() <= frozen
    del later


def test_can_be_turned_off(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", "False")
    assert heap.freeze_startup_heap() is False
    assert gc.get_freeze_count() == 0


async def test_the_first_watch_freezes_the_heap(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_qwenbatch.triggers.status_watch import acquire_watch, release_watch
    from tests.unit.triggers.test_status_watch import _settings

    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    watch = acquire_watch(_settings())
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await release_watch(watch)


class _Cycle:
    """A trigger's state that ends as a reference cycle (only the cyclic collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def _walked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_the_running_triggers_state_is_frozen_as_they_grow(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    monkeypatch.setattr(heap, "FREEZE_MIN_TRIGGERS", 8)
    monkeypatch.setattr(heap, "FREEZE_GROWTH", 0.25)
    state = [{"trigger": i, "read": [i]} for i in range(8)]
    assert [heap.trigger_started() for _ in range(7)] == [False] * 7
    assert _walked(state)
    assert heap.trigger_started() is True  # the 8th
    assert not _walked(state)
    more = [{"trigger": i} for i in range(2)]
    assert heap.trigger_started() is False  # 9 < 8 x 1.25
    assert _walked(more)
    assert heap.trigger_started() is True  # 10: grown by a quarter
    assert not _walked(more)


def test_what_frozen_triggers_leave_is_collected_once_a_quarter_of_them_ended(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    monkeypatch.setattr(heap, "FREEZE_MIN_TRIGGERS", 8)
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    for _ in range(8):
        heap.trigger_started()
    del cycle  # the trigger ended: its state is garbage, but frozen
    gc.collect()
    assert gone() is not None  # a frozen cycle is not collected...
    assert heap.trigger_ended() is False
    assert heap.trigger_ended() is True  # ...until a quarter of the frozen triggers ended
    assert gone() is None
    assert gc.get_freeze_count() > 0  # the 6 still running are frozen again


def test_triggers_are_not_frozen_when_turned_off(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", "False")
    monkeypatch.setattr(heap, "FREEZE_MIN_TRIGGERS", 2)
    assert [heap.trigger_started() for _ in range(4)] == [False] * 4
    assert heap.trigger_ended() is False
    assert gc.get_freeze_count() == 0


def test_what_triggers_keep_from_their_first_status_is_frozen_once_a_page_was_taken(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    monkeypatch.setattr(heap, "FREEZE_MIN_TRIGGERS", 4)
    before = time.monotonic()
    for _ in range(4):
        heap.trigger_started()
    first_statuses = [{"batch": i, "counts": [i]} for i in range(4)]  # created after that freeze
    assert heap.statuses_settled(0.0) is False  # no page answered yet
    assert heap.statuses_settled(before) is False  # a page answered before the freeze: nothing new
    assert _walked(first_statuses)
    assert heap.statuses_settled(time.monotonic()) is True
    assert not _walked(first_statuses)
    other_watch = [{"batch": i} for i in range(4)]  # another Connection's triggers, a page later
    assert heap.statuses_settled(time.monotonic()) is True
    assert not _walked(other_watch)
    monkeypatch.setattr(heap, "SETTLE_WINDOW", 0.0)
    later = [{"churn": i} for i in range(4)]
    assert heap.statuses_settled(time.monotonic()) is False  # settled: what comes now is young churn
    assert _walked(later)


async def test_a_sweep_freezes_what_the_readers_of_each_page_kept_before_its_next_page(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real StatusWatch over a 3-page sweep: page 1's readers' state is frozen before page 2 is asked.

    Frozen only when the sweep ended, a 10-page sweep (10 Connections x 1,000 triggers) left
    10,000 triggers' state for every full collection to walk: 50-70 ms stalls measured.
    """
    from tests.unit.triggers.test_status_watch import FakeServer, batch, make_watch

    monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_FREEZE_STARTUP_HEAP", raising=False)
    monkeypatch.setattr(heap, "FREEZE_MIN_TRIGGERS", 4)
    kept: list[dict[str, object]] = []
    walked_at_page: list[list[bool]] = []

    class Server(FakeServer):
        async def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/batches"):
                walked_at_page.append([_walked(k) for k in kept])
            return await super().__call__(request)

    server = Server([batch(i) for i in range(250)])  # newest first: page 1 is batch_0249..0150
    watch, client = make_watch(server)
    for _ in range(4):
        heap.trigger_started()  # the triggers' start froze the heap

    async def reader(i: int) -> None:
        status = await watch.read(f"batch_{i:04d}")
        kept.append({"batch": status.id, "progress": [status.request_counts]})  # what a trigger keeps

    await asyncio.gather(*(reader(i) for i in (249, 200, 150, 0)))
    assert [p.get("after") for p in server.pages] == [None, "batch_0150", "batch_0050"]
    assert walked_at_page[0] == []
    assert len(walked_at_page[1]) == 3 and not any(walked_at_page[1]), walked_at_page
    # The next sweep's first turn freezes what page 3's reader kept; the sweeps after it give
    # no batch its first status, so nothing young is frozen any more.
    await asyncio.gather(*(watch.read(f"batch_{i:04d}") for i in (249, 200, 150, 0)))
    assert not any(_walked(k) for k in kept)
    churn = [{"young": i} for i in range(4)]
    await asyncio.gather(*(watch.read(f"batch_{i:04d}") for i in (249, 200, 150, 0)))
    await client.aclose()
    assert len(server.pages) == 9
    assert _walked(churn)
