"""Triggerer scale: N concurrent batch-status triggers in ONE event loop, as the triggerer runs them.

The emulator runs as a separate process (it must not share the loop), answers every status
read (one batch or a list page) after 100 ms, and keeps every batch in progress. Each trigger
asks for its status once a second. Measured over a steady window: event-loop lag (a probe
coroutine sleeping 10 ms; lag = how late it wakes), status requests per second as the emulator
logged them, batch statuses delivered to the triggers per second, and RSS growth per trigger
(psutil, after the triggers are up, minus before they were built).

Compared in the same run: our ``BatchStatusTrigger`` (Connection from the env var; the
triggers of the loop share clients and one status watch that reads pages of the in-flight
list), the OpenAI provider's ``OpenAIBatchTrigger`` (sync SDK call inside ``async def run()``)
pointed at the emulator, and a minimal ``asyncio.to_thread`` poller sharing one ``httpx.Client``.

The N batches watched are the newest N of the account (the in-flight list is newest first;
the live API allows at most 1,000 unfinished batches per account, so a real sweep is at most
10 pages). The rate quotas of the live API (retrieve 1,000/min, list 100/min per account) are
not enforced by the emulator: the table shows what each poller would use of them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess
from benchmarks._common import API_KEY, chat_rows, set_connections, write_rows
from benchmarks._report import command, parser, percentile, table, write_section

GOAL_LAG_MS = 50.0
GOAL_RSS_KB = 20.0


def create_batches(handle: EmulatorHandle, n: int, tmp: Path) -> list[str]:
    from airflow_provider_qwenbatch.client.sync import BatchClient

    with BatchClient(handle.api_key, handle.base_url) as client:
        f = client.upload_file(write_rows(tmp / "scale.jsonl", chat_rows(3)))
        return [client.create_batch(f.id, "/v1/chat/completions").id for _ in range(n)]


def ours_factory(batch_id: str) -> Callable[[], Any]:
    from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

    async def run() -> None:
        trigger = BatchStatusTrigger(batch_id=batch_id, poll_interval=1.0)
        try:
            async for _ in trigger.run():
                return
        finally:
            await trigger.cleanup()

    return run


def openai_factory(batch_id: str) -> Callable[[], Any]:
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger

    async def run() -> None:
        trigger = OpenAIBatchTrigger(
            conn_id="openai_default", batch_id=batch_id, poll_interval=1.0, timeout=86400
        )
        async for _ in trigger.run():
            return

    return run


def to_thread_factory(
    handle: EmulatorHandle, shared: dict[str, httpx.Client]
) -> Callable[[str], Callable[[], Any]]:
    def factory(batch_id: str) -> Callable[[], Any]:
        async def run() -> None:
            if "client" not in shared:
                shared["client"] = httpx.Client(
                    base_url=handle.base_url + "/", headers={"Authorization": f"Bearer {handle.api_key}"}
                )
            client = shared["client"]
            while True:
                response = await asyncio.to_thread(client.get, f"batches/{batch_id}")
                if json.loads(response.text)["status"] in ("completed", "failed", "expired", "cancelled"):
                    return
                await asyncio.sleep(1.0)

        return run

    return factory


def _delivered_by_watches() -> int:
    from airflow_provider_qwenbatch.triggers.status_watch import running_watches

    return sum(w.stats.listed + w.stats.singles for w in running_watches())


async def measure(
    handle: EmulatorHandle,
    batch_ids: list[str],
    factory: Callable[[str], Callable[[], Any]],
    warmup: float,
    window: float,
    watched: bool,
) -> dict[str, float]:
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(max(0.0, time.perf_counter() - t - 0.01))

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(factory(b)()) for b in batch_ids]
    await asyncio.sleep(warmup)
    probe_task = asyncio.ensure_future(probe())
    seq0 = (await asyncio.to_thread(handle.requests, since=0, endpoint="list_files"), 0)[1]
    last = await asyncio.to_thread(lambda: handle.health())
    d0 = _delivered_by_watches()
    t0 = time.time()
    await asyncio.sleep(window)
    t1 = time.time()
    delivered = _delivered_by_watches() - d0
    rss1 = proc.memory_info().rss
    stop.set()
    await probe_task
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    crashed = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is not None)
    reads = await asyncio.to_thread(handle.requests, since=seq0, endpoint="get_batch")
    pages = await asyncio.to_thread(handle.requests, since=seq0, endpoint="list_batches")
    n_reads = sum(1 for e in reads if t0 <= e["wall"] < t1)
    n_pages = sum(1 for e in pages if t0 <= e["wall"] < t1)
    del last
    span = t1 - t0
    return {
        "p99_ms": percentile(lags, 99) * 1000,
        "max_ms": max(lags, default=0.0) * 1000,
        "reads_per_min": n_reads / span * 60,
        "pages_per_min": n_pages / span * 60,
        # Without a watch each read delivers one status.
        "delivered_per_s": (delivered if watched else n_reads) / span,
        "rss_kb_per": (rss1 - rss0) / 1024 / len(batch_ids),
        "crashed": crashed,
        "ramp_s": time.perf_counter() - started - window,
    }


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 5000]
    baseline_sizes = {100} if args.quick else {100, 1000}
    window = 15.0 if args.quick else 30.0
    tmp = Path(__import__("tempfile").mkdtemp(prefix="bench-scale-"))
    config = EmulatorConfig.fast(
        api_key=API_KEY,
        port=0,
        lines_per_second=0.0001,
        request_log_size=max(sizes) * int(window + 30) * 2,
        faults={"get_batch": {"latency_ms": 100}, "list_batches": {"latency_ms": 100}},
    )
    import airflow.providers.openai.triggers.openai  # noqa: F401

    import airflow_provider_qwenbatch.triggers.batch  # noqa: F401

    rows = []
    results: dict[tuple[str, int], dict[str, float]] = {}
    with EmulatorProcess(config) as handle:
        set_connections(handle, max_retries=3)
        all_ids = create_batches(handle, max(sizes), tmp)
        shared: dict[str, httpx.Client] = {}
        contenders: list[tuple[str, Callable[[str], Callable[[], Any]], set[int], bool]] = [
            ("ours: BatchStatusTrigger", ours_factory, set(sizes), True),
            ("OpenAI provider: OpenAIBatchTrigger", openai_factory, baseline_sizes, False),
            ("minimal asyncio.to_thread poller", to_thread_factory(handle, shared), baseline_sizes, False),
        ]
        for n in sizes:
            for label, factory, allowed, watched in contenders:
                if n not in allowed:
                    continue
                warmup = 3.0 + n / 1000.0
                # The newest n: what a sweep of the in-flight list (newest first) meets first.
                r = asyncio.run(measure(handle, all_ids[-n:], factory, warmup, window, watched))
                results[(label, n)] = r
                print(label, n, {k: round(v, 2) for k, v in r.items()}, flush=True)
                rows.append(
                    [
                        label,
                        n,
                        f"{r['p99_ms']:.1f}",
                        f"{r['max_ms']:.1f}",
                        f"{r['delivered_per_s']:.0f}",
                        f"{r['reads_per_min']:.0f} ({r['reads_per_min'] / 1000:.1f}x)",
                        f"{r['pages_per_min']:.0f} ({r['pages_per_min'] / 100:.1f}x)",
                        f"{r['rss_kb_per']:.1f}",
                        int(r["crashed"]),
                    ]
                )
        if "client" in shared:
            shared["client"].close()
    ours_1000 = results[("ours: BatchStatusTrigger", 1000)]
    ours_rss = max(results[("ours: BatchStatusTrigger", n)]["rss_kb_per"] for n in sizes if n >= 1000)
    body = table(
        [
            "poller",
            "N",
            "loop lag p99 (ms)",
            "loop lag max (ms)",
            "statuses delivered/s",
            "GET /batches/{id} per min (x live quota 1,000)",
            "list pages per min (x live quota 100)",
            "RSS per trigger (KB)",
            "crashed",
        ],
        rows,
    )
    body += (
        f"\n\nEvery trigger asks for its status once a second (1 s poll interval); server latency 100 ms on "
        f"every status request; steady window {window:.0f} s after a warm-up. One GET per trigger per poll "
        "would deliver at most N / 1.1 statuses per second, and at N = 1,000 that is 55x the account's "
        "retrieve quota of the live API, which caps one-GET-per-read pollers at ~17 statuses per second "
        "for the whole account. Ours reads pages of the in-flight list, spaced to "
        "`[qwenbatch] trigger_list_pages_per_minute` (default 60, within the live quota of 100/min): one "
        "page answers 100 triggers, so up to 100 statuses per second, each trigger's refreshed about "
        "every max(2, N/100) seconds (a read waits for the next page that shows its batch: about 1 s up to N = 100, "
        "up to N/100 s beyond), and a batch is read on its own only when the list stops showing it "
        "(it ended). RSS per trigger = growth of "
        "this process's RSS while the N triggers run, divided by N (allocator noise makes the 100-trigger "
        "figure rough).\n\n"
        f"Goals: loop lag max < {GOAL_LAG_MS:.0f} ms at 1,000 triggers: "
        f"**{'met' if ours_1000['max_ms'] < GOAL_LAG_MS else 'NOT met'}** ({ours_1000['max_ms']:.0f} ms); "
        f"RSS < {GOAL_RSS_KB:.0f} KB per trigger: **{'met' if ours_rss < GOAL_RSS_KB else 'NOT met'}** "
        f"({ours_rss:.0f} KB)."
    )
    print(body)
    if not args.no_write:
        write_section("triggerer_scale", "Triggerer scale", body, command("triggerer_scale", args.quick))


if __name__ == "__main__":
    main()
