"""freeze_startup_heap: the objects alive when the first watch starts leave the collector's walks."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from airflow_provider_qwenbatch.triggers import heap


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(heap, "_frozen", False)
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
