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
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

# psutil ships no types and types-psutil is not in the lock: it is untyped (Any) here.
import psutil  # type: ignore[import-untyped]

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess
from benchmarks._common import API_KEY, chat_rows, set_connections, write_rows
from benchmarks._report import command, parser, table, write_section
from benchmarks._stalls import LagProbe, StallRecorder, window_stats

GOAL_LAG_MS = 50.0
GOAL_RSS_KB = 10.0
# The many-Connections row: one status watch each, each with its own list budget.
CONNECTIONS = 10
PER_CONNECTION = 1000
BUDGET = 60.0  # [qwenbatch] trigger_list_pages_per_minute, the default


def create_batches(handle: EmulatorHandle, n: int, tmp: Path) -> list[str]:
    """``n`` batches (8 created at a time), oldest first as the account lists them."""
    from airflow_provider_qwenbatch.client.sync import BatchClient

    with BatchClient(handle.api_key, handle.base_url) as client:
        f = client.upload_file(write_rows(tmp / "scale.jsonl", chat_rows(3)))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.create_batch(f.id, "/v1/chat/completions"), range(n)))
        newest_first = [b.id for b in client.iter_batches(page_size=100)]
    return newest_first[::-1]


def ours_factory(batch_id: str, conn_id: str = "qwen_batch_default") -> Callable[[], Any]:
    from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

    async def run() -> None:
        trigger = BatchStatusTrigger(batch_id=batch_id, conn_id=conn_id, poll_interval=1.0)
        try:
            async for _ in trigger.run():
                return
        finally:
            await trigger.cleanup()

    return run


def openai_factory(batch_id: str, conn_id: str = "") -> Callable[[], Any]:
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
) -> Callable[[str, str], Callable[[], Any]]:
    def factory(batch_id: str, conn_id: str = "") -> Callable[[], Any]:
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


# One Connection's share of a run: its emulator (one account), its Connection id, its batches.
Account = tuple[EmulatorHandle, str, list[str]]
Factory = Callable[[str, str], Callable[[], Any]]


async def start_like_the_triggerer(makers: list[Callable[[], Any]]) -> list[asyncio.Task[Any]]:
    """One task per trigger, as ``TriggerRunner.create_triggers`` (Airflow 3.3.2) makes them.

    It yields to the loop (``await asyncio.sleep(0)``) before each trigger it creates, so a
    restart with N deferred tasks starts all N within a fraction of a second, interleaved with
    the first steps of those already started.
    """
    loop = asyncio.get_running_loop()
    tasks = []
    for make in makers:
        await asyncio.sleep(0)
        tasks.append(loop.create_task(make()))
    return tasks


def _count(handle: EmulatorHandle, endpoint: str, t0: float, t1: float) -> int:
    return sum(1 for e in handle.requests(since=0, endpoint=endpoint) if t0 <= e["wall"] < t1)


async def measure(
    accounts: list[Account], factory: Factory, start_window: float, window: float, watched: bool
) -> dict[str, Any]:
    """Run the triggers of ``accounts`` in this loop; lag in the start and the steady window."""
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    n = sum(len(ids) for _, _, ids in accounts)
    probe, recorder = LagProbe(), StallRecorder()
    with recorder:
        probe.start()
        began = time.perf_counter()
        tasks = await start_like_the_triggerer([factory(b, conn) for _, conn, ids in accounts for b in ids])
        started_in = time.perf_counter() - began
        await asyncio.sleep(max(0.0, start_window - started_in))
        d0, t0, steady0 = _delivered_by_watches(), time.time(), time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.sleep(window)
        t1, steady1 = time.time(), time.perf_counter()
        cpu1 = time.process_time()
        delivered = _delivered_by_watches() - d0
        rss1 = proc.memory_info().rss
        await probe.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    crashed = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is not None)
    span = t1 - t0
    reads = [await asyncio.to_thread(_count, h, "get_batch", t0, t1) for h, _, _ in accounts]
    pages = [await asyncio.to_thread(_count, h, "list_batches", t0, t1) for h, _, _ in accounts]
    return {
        "start": window_stats(probe.lags, recorder, began, steady0),
        "steady": window_stats(probe.lags, recorder, steady0, steady1),
        "started_in_s": started_in,
        "reads_per_min": sum(reads) / span * 60,
        # The busiest Connection's list requests: each has its own budget.
        "pages_per_min": max(pages) / span * 60,
        # Without a watch each read delivers one status.
        "delivered_per_s": (delivered if watched else sum(reads)) / span,
        "rss_kb_per": (rss1 - rss0) / 1024 / n,
        # CPU of this process (the loop, its collections and worker threads) per second.
        "cpu_per_s": (cpu1 - cpu0) / (steady1 - steady0),
        "load": os.getloadavg()[0],
        "crashed": crashed,
    }


def create_accounts(
    counts: list[int], tmp: Path, request_log: int
) -> tuple[list[EmulatorProcess], list[Account]]:
    """One emulator per Connection (one account each), with ``counts[i]`` batches in the i-th."""
    config = EmulatorConfig.fast(
        api_key=API_KEY,
        port=0,
        lines_per_second=0.0001,
        # The batches never move: a slow tick keeps the emulators' CPU off the loop measured.
        tick_interval=1.0,
        request_log_size=request_log,
        faults={"get_batch": {"latency_ms": 100}, "list_batches": {"latency_ms": 100}},
    )
    processes: list[EmulatorProcess] = []
    accounts: list[Account] = []
    try:
        for i, n in enumerate(counts):
            process = EmulatorProcess(config)
            processes.append(process)
            handle = process.start()
            conn_id = "qwen_batch_default" if i == 0 else f"qwen_batch_scale_{i}"
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
                {
                    "conn_type": "qwen_batch",
                    "password": handle.api_key,
                    "host": handle.base_url,
                    "extra": {"max_retries": 3},
                }
            )
            if i == 0:
                set_connections(handle, max_retries=3)
            accounts.append((handle, conn_id, create_batches(handle, n, tmp)))
            print(f"account {i + 1}/{len(counts)}: {n} batches", flush=True)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return processes, accounts


def _fmt(values: list[float]) -> str:
    """Median of the rounds, and their range when there are several."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=3, help="runs of each of our rows (medians reported)")
    p.add_argument(
        "--only",
        choices=("many", "thousand"),
        help="only the 10 Connections x 1,000 row, or only ours at 1,000 (printed, BENCHMARKS.md left alone)",
    )
    args = p.parse_args()
    if args.only:
        args.no_write = True
    sizes = [100, 1000] if args.quick else [100, 1000, 5000]
    baseline_sizes = {100}
    window = 15.0 if args.quick else 30.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # What a triggerer process has loaded before it runs a trigger (its heap and imports).
    import airflow.jobs.triggerer_job_runner
    import airflow.providers.openai.triggers.openai  # noqa: F401

    import airflow_provider_qwenbatch.triggers.batch  # noqa: F401

    rows = []
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    # The first account also serves the single-Connection rows, up to max(sizes) batches.
    counts = [max(max(sizes), PER_CONNECTION)] + [PER_CONNECTION] * (CONNECTIONS - 1)
    processes, accounts = create_accounts(counts, tmp, max(sizes) * int(window + 30) * 2)
    try:
        handle0, conn0, ids0 = accounts[0]
        shared: dict[str, httpx.Client] = {}
        contenders: list[tuple[str, Factory, set[int], bool]] = [
            ("ours: BatchStatusTrigger", ours_factory, set(sizes), True),
            # Full runs only: its sync call blocks the loop ~2 s per trigger as each starts (~4 min at 100).
            (
                "OpenAI provider: OpenAIBatchTrigger",
                openai_factory,
                set() if args.quick else baseline_sizes,
                False,
            ),
            ("minimal asyncio.to_thread poller", to_thread_factory(handle0, shared), baseline_sizes, False),
        ]
        plans: list[tuple[str, str, Factory, list[Account], int, bool]] = []
        for n in sizes:
            for label, factory, allowed, watched in contenders:
                if n in allowed:
                    # The newest n: what a sweep of the in-flight list (newest first) meets first.
                    plans.append((label, f"{n:,}", factory, [(handle0, conn0, ids0[-n:])], n, watched))
        ten = [(h, c, ids[-PER_CONNECTION:]) for h, c, ids in accounts]
        plans.append(
            (
                "ours: BatchStatusTrigger",
                f"{CONNECTIONS} Connections x {PER_CONNECTION:,}",
                ours_factory,
                ten,
                PER_CONNECTION,
                True,
            )
        )
        if args.only == "many":
            plans = plans[-1:]
        elif args.only == "thousand":
            plans = [p for p in plans if p[0].startswith("ours") and p[1] == "1,000"]
        for label, size, factory, group, per_conn, watched in plans:
            # Long enough for every trigger's first status: a sweep of per_conn/100 pages at 1 a second.
            start_window = min(2.0 + per_conn / 100.0, 12.0)
            for _ in range(args.rounds if watched else 1):
                r = asyncio.run(measure(group, factory, start_window, window, watched))
                results.setdefault((label, size), []).append(r)
                print(label, size, json.dumps(r, default=str), flush=True)
        if "client" in shared:
            shared["client"].close()
    finally:
        for process in processes:
            process.stop()
    if args.only:
        return
    for (label, size), rs in results.items():
        worst = max(rs, key=lambda r: max(r["start"]["max_ms"], r["steady"]["max_ms"]))
        cause = max((worst["start"], worst["steady"]), key=lambda w: w["max_ms"])["cause"]
        rows.append(
            [
                label,
                size,
                _fmt([r["start"]["p99_ms"] for r in rs]),
                _fmt([r["start"]["max_ms"] for r in rs]),
                _fmt([r["steady"]["p99_ms"] for r in rs]),
                _fmt([r["steady"]["max_ms"] for r in rs]),
                cause or "-",
                ", ".join(f"{r['start']['full_gcs']} / {r['steady']['full_gcs']}" for r in rs),
                f"{statistics.median(r['delivered_per_s'] for r in rs):.0f}",
                f"{statistics.median(r['cpu_per_s'] for r in rs):.2f}",
                ", ".join(f"{r['load']:.1f}" for r in rs),
                f"{statistics.median(r['reads_per_min'] for r in rs):.0f}",
                f"{statistics.median(r['pages_per_min'] for r in rs):.0f}",
                # The first round's: later ones reuse memory the earlier ones freed.
                f"{max(r['rss_kb_per'] for r in rs):.1f}",
                max(int(r["crashed"]) for r in rs),
            ]
        )
    body = table(
        [
            "poller",
            "N",
            "start window: lag p99 (ms)",
            "start window: lag max (ms)",
            "steady window: lag p99 (ms)",
            "steady window: lag max (ms)",
            "worst stall (worst round): what ran",
            "full gc runs, start / steady, per round",
            "statuses delivered/s",
            "process CPU, steady window (s per s)",
            "load average (1 min) at the end of each round",
            "GET /batches/{id} per min (live quota 1,000)",
            "list pages per min, busiest Connection (live quota 100)",
            "RSS per trigger (KB)",
            "crashed",
        ],
        rows,
    )
    body += notes(results, window, args.rounds)
    print(body)
    if not args.no_write:
        write_section("triggerer_scale", "Triggerer scale", body, command("triggerer_scale", args.quick))


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def notes(results: dict[tuple[str, str], list[dict[str, Any]]], window: float, rounds: int) -> str:
    """The text under the table: method, and the goals as met or not."""
    ours = "ours: BatchStatusTrigger"
    one = results[(ours, "1,000")]
    many = results[(ours, f"{CONNECTIONS} Connections x {PER_CONNECTION:,}")]

    def lag(rs: list[dict[str, Any]], which: str) -> tuple[float, float]:
        values = [r[which]["max_ms"] for r in rs]
        return statistics.median(values), max(values)

    goals = []
    for name, rs in (("1,000 triggers", one), (f"{CONNECTIONS} Connections x {PER_CONNECTION:,}", many)):
        for which in ("start", "steady"):
            med, worst = lag(rs, which)
            goals.append(
                f"loop lag max < {GOAL_LAG_MS:.0f} ms at {name}, {which} window: **{_goal(med < GOAL_LAG_MS)}** "
                f"(median of {len(rs)} rounds {med:.0f} ms, worst round {worst:.0f} ms)"
            )
    rss = max(r["rss_kb_per"] for r in many)
    goals.append(
        f"RSS < {GOAL_RSS_KB:.0f} KB per trigger at {CONNECTIONS} x {PER_CONNECTION:,}: **{_goal(rss < GOAL_RSS_KB)}** ({rss:.1f} KB)"
    )
    pages = max(r["pages_per_min"] for r in many)
    goals.append(
        f"each Connection's list requests within its budget ({BUDGET:.0f}/min): **{_goal(pages <= BUDGET * 1.02)}** "
        f"(busiest {pages:.0f}/min)"
    )
    return (
        f"\n\nEach trigger asks for its status once a second; server latency 100 ms on every status request; one "
        f"emulator process per Connection (one account each, at most 1,000 unfinished batches as on the live API). "
        f"The triggers are started as Airflow 3.3.2's `TriggerRunner.create_triggers` starts them after a restart "
        f"(one task each, yielding to the loop before each); all N begin within "
        f"{max(r['started_in_s'] for (label, _), rs in results.items() if label == ours for r in rs):.2f} s "
        "(ours). Start window: from the first "
        f"trigger's creation until each has had time for its first status (2 s + 1 s per 100 triggers of a "
        f"Connection, at most 12 s); steady window: the {window:.0f} s after. Loop lag: a probe sleeping 10 ms, "
        f"lag = how late it wakes. The cause of the worst stall is what overlapped it: garbage collections "
        f"(`gc.callbacks`) and loop callbacks that ran >= 5 ms (each `asyncio.Handle` timed). Our rows are "
        f"{rounds} rounds each: median (min-max); the machine is shared with other engineers' test runs, so "
        f"single rounds are noisy. Request counts are the emulators' logs over the steady window; the rate "
        f"quotas of the live API are not enforced by the emulator. RSS per trigger = growth of this process's "
        f"RSS while the N triggers run, divided by N, the largest of the rounds (later rounds reuse memory the earlier ones freed; rough at 100).\n\nGoals: "
        + "; ".join(goals)
        + "."
    )


if __name__ == "__main__":
    main()
