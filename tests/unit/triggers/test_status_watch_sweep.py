"""StatusWatch sweeps: late readers join the pages still to come, delayed reads, unchanged batches.

Same fake server as ``test_status_watch`` (``httpx.MockTransport``); the watch and the async
client under test are the real ones.
"""

from __future__ import annotations

import asyncio

from tests.unit.triggers.test_status_watch import FakeServer, batch, make_watch


async def test_a_read_asked_after_the_first_page_is_answered_by_the_pages_still_to_come() -> None:
    # 250 batches, newest first: page 1 = 0249..0150, page 2 = 0149..0050, page 3 = 0049..0000.
    server = FakeServer([batch(i) for i in range(250)])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    oldest = asyncio.ensure_future(watch.read("batch_0000"))  # on the last page
    await server.asked.wait()  # page 1 is asked: the readers below came after it
    middle = asyncio.ensure_future(watch.read("batch_0100"))  # on page 2, not asked yet
    newest = asyncio.ensure_future(watch.read("batch_0200"))  # on page 1, already asked
    server.gate.set()
    got = await asyncio.wait_for(asyncio.gather(oldest, middle, newest), 10)
    assert [b.id for b in got] == ["batch_0000", "batch_0100", "batch_0200"]
    # The first sweep (3 pages) answered the middle reader too; the newest one, whose page had
    # gone by, waited for the next sweep's first page, not for a read of its own.
    assert len(server.pages) == 4 and server.singles == []
    assert [p.get("after") for p in server.pages] == [None, "batch_0150", "batch_0050", None]
    await client.aclose()


async def test_a_late_reader_of_an_ended_batch_still_gets_it_from_the_batch_itself() -> None:
    server = FakeServer([batch(i) for i in range(150)] + [batch(900, "completed")])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    first = asyncio.ensure_future(watch.read("batch_0000"))  # page 2
    await server.asked.wait()
    ended = asyncio.ensure_future(watch.read("batch_0900"))
    server.gate.set()
    assert (await asyncio.wait_for(ended, 10)).status.value == "completed"
    assert (await first).id == "batch_0000"
    assert server.singles == ["batch_0900"]
    await client.aclose()


async def test_a_delayed_read_is_answered_by_a_page_asked_after_its_delay() -> None:
    server = FakeServer([batch(1)])
    watch, client = make_watch(server)
    loop = asyncio.get_running_loop()
    asked_at = loop.time()
    got = await asyncio.wait_for(watch.read("batch_0001", delay=0.3), 10)
    assert got.id == "batch_0001"
    assert len(server.page_times) == 1 and server.page_times[0] >= asked_at + 0.3
    await client.aclose()


async def test_a_read_asked_while_the_watch_waits_for_a_later_one_is_not_held_back() -> None:
    server = FakeServer([batch(1), batch(2)])
    watch, client = make_watch(server)
    later = watch.read("batch_0001", delay=5.0)
    await asyncio.sleep(0.05)  # the sweeper now sleeps until the delayed read is due
    now = await asyncio.wait_for(watch.read("batch_0002"), 2)
    assert now.id == "batch_0002" and not later.done()
    later.cancel()
    await watch.aclose()
    await client.aclose()


async def test_a_delayed_read_cancelled_before_it_is_due_sends_nothing() -> None:
    server = FakeServer([batch(1)])
    watch, client = make_watch(server)
    reader = watch.read("batch_0001", delay=0.2)
    reader.cancel()
    await asyncio.sleep(0.4)
    assert server.pages == [] and server.singles == []
    await watch.aclose()
    await client.aclose()


async def test_every_read_sees_the_batch_as_listed_then_and_an_unchanged_one_is_the_same_object() -> None:
    server = FakeServer([batch(1)])
    watch, client = make_watch(server)
    first = await watch.read("batch_0001")
    again = await watch.read("batch_0001")
    assert again is first  # the page's copy was dropped: the reader keeps one object, not one per poll
    server.batches["batch_0001"] = batch(1, request_counts={"total": 3, "completed": 2, "failed": 0})
    moved = await watch.read("batch_0001")
    assert moved is not first and moved.counts.completed == 2 and first.counts.completed == 1
    server.batches["batch_0001"] = batch(
        1, "finalizing", request_counts={"total": 3, "completed": 2, "failed": 0}
    )
    assert (await watch.read("batch_0001")).status.value == "finalizing"
    await watch.aclose()
    await client.aclose()


async def test_late_readers_do_not_carry_a_sweep_past_the_pages_its_first_readers_needed() -> None:
    # The account has more batches in flight than the triggers watch (other DAGs, other users).
    server = FakeServer([batch(i) for i in range(250)])
    server.gate = asyncio.Event()
    watch, client = make_watch(server)
    first = asyncio.ensure_future(watch.read("batch_0100"))  # page 2
    await server.asked.wait()
    late = asyncio.ensure_future(watch.read("batch_0240"))  # page 1, already asked
    server.gate.set()
    got = await asyncio.wait_for(asyncio.gather(first, late), 10)
    assert [b.id for b in got] == ["batch_0100", "batch_0240"]
    # The first sweep ended with its first reader's page (2); the late reader had the next
    # sweep's first page at once, not after page 3.
    assert [p.get("after") for p in server.pages] == [None, "batch_0150", None] and server.singles == []
    await client.aclose()
