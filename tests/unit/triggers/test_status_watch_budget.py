"""StatusWatch under a throttled or hanging list, and where its own logs go.

Same fake server as ``test_status_watch`` (``httpx.MockTransport``); the watch and the async
client are the real ones, the client with the retry policy a Connection gives it by default.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import structlog

from airflow_provider_qwenbatch.client import RetryPolicy
from airflow_provider_qwenbatch.triggers import status_watch
from tests.unit.triggers.test_status_watch import FakeServer, batch, make_watch

THROTTLED = {"error": {"message": "Requests rate limit exceeded", "code": "Throttling.RateQuota"}}


def throttled() -> httpx.Response:
    return httpx.Response(429, json=THROTTLED, headers={"Retry-After": "120", "x-request-id": "rid-429"})


async def test_a_throttled_list_does_not_hold_the_readers_for_its_retry_after() -> None:
    # The client's default policy would wait Retry-After (120 s) five times over: every trigger
    # of the watch, and its deadline cancel, would wait ten minutes for one status.
    server = FakeServer([batch(1), batch(2)])
    server.list_answer = throttled()
    watch, client = make_watch(server, retry=RetryPolicy())
    loop = asyncio.get_running_loop()
    began = loop.time()
    got = await asyncio.wait_for(asyncio.gather(watch.read("batch_0001"), watch.read("batch_0002")), 10)
    assert loop.time() - began < 2.0
    assert [b.id for b in got] == ["batch_0001", "batch_0002"]
    assert len(server.pages) == 1 and sorted(server.singles) == ["batch_0001", "batch_0002"]
    # Listing pauses for the server's Retry-After, not the default minute.
    assert watch._list_paused_until - loop.time() == pytest.approx(120, abs=2)
    await watch.read("batch_0001")
    assert len(server.pages) == 1
    await client.aclose()


async def test_a_retry_after_beyond_reason_pauses_listing_at_most_the_cap() -> None:
    server = FakeServer([batch(1)])
    server.list_answer = httpx.Response(429, json=THROTTLED, headers={"Retry-After": "86400"})
    watch, client = make_watch(server, retry=RetryPolicy())
    await asyncio.wait_for(watch.read("batch_0001"), 10)
    left = watch._list_paused_until - asyncio.get_running_loop().time()
    assert status_watch.LIST_PAUSE_MAX - 2 < left <= status_watch.LIST_PAUSE_MAX
    await client.aclose()


async def test_a_hanging_list_gives_up_after_the_readers_poll_interval() -> None:
    server = FakeServer([batch(1), batch(2)])
    server.gate = asyncio.Event()  # never set: the list request hangs
    watch, client = make_watch(server, retry=RetryPolicy())
    loop = asyncio.get_running_loop()
    began = loop.time()
    slow, fast = await asyncio.wait_for(
        asyncio.gather(watch.read("batch_0001", within=60.0), watch.read("batch_0002", within=2.0)), 10
    )
    # The shortest poll interval of the sweep's readers bounds its list request.
    assert 2.0 <= loop.time() - began < 3.5
    assert (slow.id, fast.id) == ("batch_0001", "batch_0002")
    assert sorted(server.singles) == ["batch_0001", "batch_0002"]
    await client.aclose()


async def test_a_burst_of_single_reads_is_spaced_to_the_retrieve_share() -> None:
    server = FakeServer([batch(i) for i in range(12)])
    server.list_answer = throttled()
    watch, client = make_watch(server, singles_per_minute=600.0)  # one read per 0.1 s
    began = asyncio.get_running_loop().time()
    got = await asyncio.wait_for(asyncio.gather(*(watch.read(f"batch_{i:04d}") for i in range(12))), 10)
    assert sorted(b.id for b in got) == sorted(f"batch_{i:04d}" for i in range(12))
    times = server.single_times
    assert len(times) == 12
    # The k-th read of the burst goes out no earlier than k x 0.1 s after the burst began: 12 reads
    # take at least 1.1 s, never more than 10 in its first second. Measured against the burst's
    # start, not read to read: a loaded machine only delays a read, and a late read makes the gap
    # to the next one, whose slot was reserved on arrival, look short (a loaded run saw 0.087 s).
    early = [(k, round(t - began, 3)) for k, t in enumerate(times) if t - began < 0.1 * k - 1e-6]
    assert early == [], f"reads before their slot (index, seconds after the burst): {early}"
    await client.aclose()


@pytest.mark.parametrize(("raw", "expected"), [(None, 500.0), ("200", 200.0), ("0", 500.0), ("x", 500.0)])
def test_single_reads_per_minute_comes_from_config(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str | None, expected: float
) -> None:
    if raw is None:
        monkeypatch.delenv("AIRFLOW__QWENBATCH__TRIGGER_SINGLE_READS_PER_MINUTE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__QWENBATCH__TRIGGER_SINGLE_READS_PER_MINUTE", raw)
    with caplog.at_level(logging.WARNING, logger=status_watch.__name__):
        assert status_watch.singles_per_minute() == expected
    assert ("not a number > 0" in caplog.text) == (raw in ("0", "x"))


class ContextCapture(logging.Handler):
    """Records each log line with the structlog contextvars bound where it was emitted.

    The triggerer routes a log line to a task's log by the ``trigger_id`` it carries, merged
    from these contextvars (``TriggerRunner.run_trigger`` binds it for each trigger).
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), structlog.contextvars.get_contextvars()))


async def test_the_watch_logs_to_the_triggerer_not_to_the_task_that_started_it() -> None:
    from airflow.jobs.triggerer_job_runner import bind_log_contextvars

    server = FakeServer([batch(1)])
    server.list_answer = httpx.Response(500, json={"error": {"message": "boom", "code": "InternalError"}})
    watch, client = make_watch(server)

    async def trigger(trigger_id: int) -> str:
        # What TriggerRunner.run_trigger does before it runs the trigger.
        bind_log_contextvars(trigger_id=trigger_id, task_id=f"task_{trigger_id}")
        got = await watch.read("batch_0001")
        # The reader's own context is untouched.
        assert structlog.contextvars.get_contextvars()["trigger_id"] == trigger_id
        return got.id

    capture = ContextCapture()
    logger = logging.getLogger(status_watch.__name__)
    logger.addHandler(capture)
    try:
        assert await asyncio.gather(asyncio.ensure_future(trigger(7)), asyncio.ensure_future(trigger(8))) == [
            "batch_0001",
            "batch_0001",
        ]
    finally:
        logger.removeHandler(capture)
    warnings = [ctx for msg, ctx in capture.lines if "Listing in-flight batches failed" in msg]
    assert len(warnings) == 1
    assert "trigger_id" not in warnings[0] and "task_id" not in warnings[0]
    await client.aclose()


async def test_the_single_reads_log_to_the_triggerer_too(caplog: pytest.LogCaptureFixture) -> None:
    from airflow.jobs.triggerer_job_runner import bind_log_contextvars

    server = FakeServer([batch(1)])
    server.list_answer = throttled()
    calls = 0
    inner = server.__call__

    async def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path.endswith("/batches/batch_0001"):
            calls += 1
            if calls == 1:
                return httpx.Response(503, json={"error": {"message": "busy", "code": "ServiceUnavailable"}})
        return await inner(request)

    watch, client = make_watch(server, retry=RetryPolicy(max_retries=1, backoff_base=0.01))
    client._http._transport = httpx.MockTransport(flaky)
    capture = ContextCapture()
    client_logger = logging.getLogger("airflow_provider_qwenbatch.client.aio")
    client_logger.addHandler(capture)

    async def trigger() -> str:
        bind_log_contextvars(trigger_id=9)
        return (await watch.read("batch_0001")).id

    try:
        assert await asyncio.wait_for(asyncio.ensure_future(trigger()), 10) == "batch_0001"
    finally:
        client_logger.removeHandler(capture)
    retries = [ctx for msg, ctx in capture.lines if "retry 1/1" in msg]
    assert len(retries) == 1 and "trigger_id" not in retries[0]
    await client.aclose()
