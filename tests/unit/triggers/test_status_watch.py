"""StatusWatch: many triggers' status reads answered by pages of the in-flight list.

The server is a small fake of ``GET /batches`` (status filter, ``after`` cursor, ``limit``,
newest first) and ``GET /batches/{id}`` behind ``httpx.MockTransport``; the watch and the
async client under test are the real ones.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.client import AsyncBatchClient, RetryPolicy
from airflow_provider_qwenbatch.client.errors import NotFoundError
from airflow_provider_qwenbatch.client.regions import Region
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings
from airflow_provider_qwenbatch.triggers import status_watch
from airflow_provider_qwenbatch.triggers.status_watch import (
    StatusWatch,
    acquire_watch,
    pages_per_minute,
    release_watch,
    running_watches,
)

API_KEY = "sk-WATCHKEY-51c2"
BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
IN_FLIGHT = {"validating", "in_progress", "finalizing", "cancelling"}


def batch(i: int, status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"batch_{i:04d}",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": status,
        "created_at": 1700000000 + i,
        "request_counts": {"total": 3, "completed": 1, "failed": 0},
        **extra,
    }


class FakeServer:
    """Batches by id; answers list pages newest first and single reads; records what it was asked."""

    def __init__(self, batches: list[dict[str, Any]], honour_filter: bool = True) -> None:
        self.batches = {b["id"]: b for b in batches}
        self.honour_filter = honour_filter
        self.pages: list[dict[str, str]] = []
        self.page_times: list[float] = []
        self.singles: list[str] = []
        self.single_times: list[float] = []
        self.list_answer: httpx.Response | None = None
        self.list_raises: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/compatible-mode/v1")
        if path == "/batches":
            self.pages.append(dict(request.url.params))
            if self.list_raises is not None:
                raise self.list_raises
            self.page_times.append(asyncio.get_running_loop().time())
            # The page shows the batches as they were when it was asked, however late it arrives.
            answer = self.list_answer or httpx.Response(200, json=self._page(request.url.params))
            self.asked.set()
            if self.gate is not None:
                await self.gate.wait()
            return answer
        batch_id = path.removeprefix("/batches/")
        self.singles.append(batch_id)
        self.single_times.append(asyncio.get_running_loop().time())
        if batch_id not in self.batches:
            return httpx.Response(
                404,
                json={"error": {"message": f"batch {batch_id} not found", "code": "not_found"}},
                headers={"x-request-id": "rid-404"},
            )
        return httpx.Response(200, json=self.batches[batch_id])

    def _page(self, params: httpx.QueryParams) -> dict[str, Any]:
        wanted = set(params["status"].split(",")) if "status" in params else None
        rows = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        if wanted is not None and self.honour_filter:
            rows = [b for b in rows if b["status"] in wanted]
        if "after" in params:
            ids = [b["id"] for b in rows]
            rows = rows[ids.index(params["after"]) + 1 :]
        limit = int(params.get("limit", 20))
        page, more = rows[:limit], len(rows) > limit
        return {
            "object": "list",
            "data": page or None,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": more,
        }


def make_watch(
    server: FakeServer, per_minute: float = 6000.0, retry: RetryPolicy | None = None, **kwargs: Any
) -> tuple[StatusWatch, AsyncBatchClient]:
    client = AsyncBatchClient(
        API_KEY,
        BASE_URL,
        transport=httpx.MockTransport(server),
        retry=retry or RetryPolicy(max_retries=0),
    )
    return StatusWatch(client, asyncio.Semaphore(8), per_minute, **kwargs), client


async def test_one_page_answers_many_readers() -> None:
    server = FakeServer([batch(i) for i in range(30)])
    watch, client = make_watch(server)
    got = await asyncio.gather(*(watch.read(f"batch_{i:04d}") for i in range(30)))
    assert [b.id for b in got] == [f"batch_{i:04d}" for i in range(30)]
    assert len(server.pages) == 1 and server.singles == []
    (page,) = server.pages
    assert page["limit"] == "100" and set(page["status"].split(",")) == IN_FLIGHT
    assert watch.stats.pages == 1 and watch.stats.listed == 30
    await client.aclose()


async def test_pages_until_every_reader_is_answered_then_stops() -> None:
    server = FakeServer([batch(i) for i in range(250)])  # newest first: batch_0249 on page 1
    watch, client = make_watch(server)
    newest = await watch.read("batch_0249")
    assert newest.id == "batch_0249" and len(server.pages) == 1

    server.pages.clear()
    oldest, newest = await asyncio.gather(watch.read("batch_0000"), watch.read("batch_0249"))
    assert (oldest.id, newest.id) == ("batch_0000", "batch_0249")
    assert [p.get("after") for p in server.pages] == [None, "batch_0150", "batch_0050"]
    assert server.singles == []
    await client.aclose()


async def test_a_batch_the_list_no_longer_shows_is_read_on_its_own() -> None:
    ended = batch(7, "completed", output_file_id="file-batch_output-7")
    server = FakeServer([batch(1), ended])
    watch, client = make_watch(server)
    running, done = await asyncio.gather(watch.read("batch_0001"), watch.read("batch_0007"))
    assert running.status.value == "in_progress"
    assert done.status.value == "completed" and done.output_file_id == "file-batch_output-7"
    assert server.singles == ["batch_0007"]
    await client.aclose()


async def test_a_terminal_status_in_a_page_is_confirmed_by_the_batch_itself() -> None:
    # A list that ignores the status filter: the end of a batch is still read from the batch.
    server = FakeServer([batch(1, "failed")], honour_filter=False)
    watch, client = make_watch(server)
    got = await watch.read("batch_0001")
    assert got.status.value == "failed" and server.singles == ["batch_0001"]
    await client.aclose()


async def test_a_read_error_goes_to_its_reader_only() -> None:
    server = FakeServer([batch(1)])
    watch, client = make_watch(server)
    missing, present = await asyncio.gather(
        watch.read("batch_9999"), watch.read("batch_0001"), return_exceptions=True
    )
    assert isinstance(missing, NotFoundError) and "rid-404" in str(missing)
    assert not isinstance(present, BaseException) and present.id == "batch_0001"
    await client.aclose()


async def test_a_failed_list_pauses_listing_and_reads_go_one_by_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeServer([batch(1), batch(2)])
    server.list_answer = httpx.Response(500, json={"error": {"message": "boom", "code": "InternalError"}})
    watch, client = make_watch(server)
    with caplog.at_level(logging.WARNING, logger=status_watch.__name__):
        got = await asyncio.gather(watch.read("batch_0001"), watch.read("batch_0002"))
    assert [b.id for b in got] == ["batch_0001", "batch_0002"]
    assert len(server.pages) == 1 and sorted(server.singles) == ["batch_0001", "batch_0002"]
    assert "Listing in-flight batches failed" in caplog.text and "HTTP 500" in caplog.text

    await watch.read("batch_0001")  # paused: no list request
    assert len(server.pages) == 1 and len(server.singles) == 3

    server.list_answer = None
    monkeypatch.setattr(watch, "_list_paused_until", 0.0)  # the pause is over
    await watch.read("batch_0001")
    assert len(server.pages) == 2 and len(server.singles) == 3
    await client.aclose()


async def test_an_unexpected_list_error_still_answers_every_reader() -> None:
    # Whatever a list request raises, no reader is left waiting on a sweep that died.
    server = FakeServer([batch(1)])
    server.list_raises = RuntimeError("a bug below the client")
    watch, client = make_watch(server)
    got = await asyncio.wait_for(watch.read("batch_0001"), 5)
    assert got.id == "batch_0001" and server.singles == ["batch_0001"]
    await client.aclose()


async def test_list_pages_are_spaced_to_the_budget() -> None:
    server = FakeServer([batch(i) for i in range(250)])
    watch, client = make_watch(server, per_minute=600.0)  # one page per 0.1 s
    await asyncio.gather(watch.read("batch_0000"), watch.read("batch_0249"))
    await watch.read("batch_0249")  # the next sweep waits its turn too
    gaps = [b - a for a, b in zip(server.page_times, server.page_times[1:], strict=False)]
    assert len(server.page_times) == 4
    assert all(gap >= 0.1 - 0.005 for gap in gaps), gaps
    await client.aclose()


async def test_reads_asked_while_the_watch_waits_for_its_turn_share_the_next_page() -> None:
    server = FakeServer([batch(1), batch(2)])
    watch, client = make_watch(server, per_minute=600.0)  # one page per 0.1 s
    await watch.read("batch_0001")
    first = asyncio.ensure_future(watch.read("batch_0001"))  # must wait ~0.1 s for the budget
    await asyncio.sleep(0.03)
    second = asyncio.ensure_future(watch.read("batch_0002"))  # asked before that page went out
    assert [b.id for b in await asyncio.gather(first, second)] == ["batch_0001", "batch_0002"]
    assert len(server.pages) == 2 and server.singles == []
    await client.aclose()


async def test_zero_pages_per_minute_reads_each_batch_on_its_own() -> None:
    server = FakeServer([batch(1), batch(2)])
    watch, client = make_watch(server, per_minute=0)
    await asyncio.gather(watch.read("batch_0001"), watch.read("batch_0002"))
    assert server.pages == [] and sorted(server.singles) == ["batch_0001", "batch_0002"]
    await client.aclose()


async def test_a_read_asked_during_a_sweep_is_answered_by_a_later_page() -> None:
    server = FakeServer([batch(1)])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    first = asyncio.ensure_future(watch.read("batch_0001"))
    await server.asked.wait()
    # The page in flight was asked before the batch changed: the second reader must not get it.
    server.batches["batch_0001"] = batch(1, "finalizing")
    second = asyncio.ensure_future(watch.read("batch_0001"))
    server.gate.set()
    assert (await first).status.value == "in_progress"
    assert (await second).status.value == "finalizing"
    assert len(server.pages) == 2
    await client.aclose()


async def test_a_cancelled_reader_leaves_the_others_alone(caplog: pytest.LogCaptureFixture) -> None:
    server = FakeServer([batch(1), batch(2)])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    gone = asyncio.ensure_future(watch.read("batch_0001"))
    kept = asyncio.ensure_future(watch.read("batch_0002"))
    await server.asked.wait()
    gone.cancel()
    server.gate.set()
    assert (await kept).id == "batch_0002"
    assert gone.cancelled()
    await watch.aclose()
    assert "exception was never retrieved" not in caplog.text
    await client.aclose()


async def test_aclose_cancels_waiting_readers() -> None:
    server = FakeServer([batch(1)])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    reader = asyncio.ensure_future(watch.read("batch_0001"))
    await server.asked.wait()
    await watch.aclose()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reader, 5)
    await client.aclose()


def _settings(base_url: str = "http://127.0.0.1:9/compatible-mode/v1") -> ConnectionSettings:
    return ConnectionSettings(
        conn_id="qwen_batch_default",
        base_url=base_url,
        region=Region.BEIJING,
        timeout=5.0,
        connect_timeout=2.0,
        max_retries=1,
        api_key=API_KEY,
    )


async def test_triggers_with_the_same_settings_share_one_watch() -> None:
    a, b = acquire_watch(_settings()), acquire_watch(_settings())
    other = acquire_watch(_settings("http://127.0.0.1:10/compatible-mode/v1"))
    assert a is b and a is not other and a.users == 2
    assert {id(w) for w in running_watches()} == {id(a), id(other)}
    await release_watch(a)
    assert a in running_watches()
    await release_watch(b)
    await release_watch(other)
    assert running_watches() == []
    assert API_KEY not in repr(a.client) and API_KEY not in repr(a)


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 60.0), ("0", 0.0), ("30", 30.0), ("lots", 60.0), ("-5", 60.0)]
)
def test_pages_per_minute_comes_from_config(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str | None, expected: float
) -> None:
    if raw is None:
        monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_LIST_PAGES_PER_MINUTE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__QWENBATCH__TRIGGER_LIST_PAGES_PER_MINUTE", raw)
    with caplog.at_level(logging.WARNING, logger=status_watch.__name__):
        assert pages_per_minute() == expected
    assert ("not a number" in caplog.text) == (raw in ("lots", "-5"))
