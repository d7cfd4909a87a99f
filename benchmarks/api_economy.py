"""API economy: requests over the life of one batch that takes one (simulated) hour, and no retry storm under 429.

Time is scaled: the emulator's batch takes ``3600 / SCALE`` real seconds and every poll
interval is divided by the same ``SCALE``; request counts come from the emulator's request
log, per batch. Compared, each on its own batch and with its defaults:

* ours, deferrable: ``SubmitBatchOperator(deferrable=True)`` (its ``BatchStatusTrigger``, poll
  60 s), then ``DownloadBatchResultsOperator``;
* ours, in the worker: ``SubmitBatchOperator(deferrable=False)`` (poll 60 s), then download;
* OpenAI provider, deferrable: ``OpenAIBatchTrigger`` with the operator's default ``poll_interval`` 60 s;
* OpenAI provider, in the worker: ``OpenAIHook.wait_for_batch`` with the operator's default
  ``wait_seconds`` 3 s.

Then 429s: every ``GET /batches/{id}`` answers 429 with ``Retry-After`` for a while, under
N triggers polling each second; requests per second are counted per second.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess
from benchmarks._common import API_KEY, StubTI, chat_rows, set_connections, write_rows
from benchmarks._report import command, parser, table, write_section

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import RuntimeTaskInstanceProtocol

GOAL = 70.0
LINES = 600


class _SubmitArgs(TypedDict):
    """The arguments both ``SubmitBatchOperator`` of one run share (the deferred one is rebuilt to resume)."""

    task_id: str
    requests: list[dict[str, Any]]
    poll_interval: float


def _context(ti: StubTI) -> Context:
    """A task context holding only ``ti``: what the operators read here."""
    # StubTI carries only the fields and XCom calls the operators use, not all of
    # RuntimeTaskInstanceProtocol: this benchmark counts HTTP requests, not task-instance behaviour.
    return {"ti": cast("RuntimeTaskInstanceProtocol", ti)}


def _create(handle: EmulatorHandle, tmp: Path, name: str, lines: int = LINES) -> str:
    from airflow_provider_qwenbatch.client.sync import BatchClient

    with BatchClient(handle.api_key, handle.base_url) as client:
        f = client.upload_file(write_rows(tmp / f"{name}.jsonl", chat_rows(lines, name)))
        return client.create_batch(f.id, "/v1/chat/completions").id


def ours(deferrable: bool, scale: float, out: dict[str, Any]) -> None:
    from airflow_provider_qwenbatch.compat import TaskDeferred
    from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator

    name = "ours-deferrable" if deferrable else "ours-worker"
    ti = StubTI("economy", name, "submit")
    kwargs: _SubmitArgs = {
        "task_id": "submit",
        "requests": chat_rows(LINES, name),
        "poll_interval": 60.0 / scale,
    }
    op = SubmitBatchOperator(deferrable=deferrable, **kwargs)
    try:
        summary = op.execute(_context(ti))
    except TaskDeferred as deferred:
        trigger = deferred.trigger

        async def drain() -> dict[str, Any]:
            events = [e.payload async for e in trigger.run()]
            await trigger.cleanup()
            return events[0]  # type: ignore[no-any-return]

        event = asyncio.run(drain())
        summary = SubmitBatchOperator(**kwargs).execute_complete(_context(ti), event)
    out["batch_id"] = summary["batch_id"]
    DownloadBatchResultsOperator(
        task_id="download", batch_id=summary["batch_id"], destination=str(out["tmp"] / name)
    ).execute(_context(StubTI("economy", name, "download")))


def openai_deferrable(handle: EmulatorHandle, scale: float, out: dict[str, Any]) -> None:
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger

    batch_id = out["batch_id"] = _create(handle, out["tmp"], "openai-deferrable")

    async def drain() -> None:
        trigger = OpenAIBatchTrigger(
            conn_id="openai_default", batch_id=batch_id, poll_interval=60.0 / scale, timeout=3600
        )
        async for _ in trigger.run():
            break

    asyncio.run(drain())


def openai_worker(handle: EmulatorHandle, scale: float, out: dict[str, Any]) -> None:
    from airflow.providers.openai.hooks.openai import OpenAIHook

    batch_id = out["batch_id"] = _create(handle, out["tmp"], "openai-worker")
    OpenAIHook(conn_id="openai_default").wait_for_batch(batch_id, wait_seconds=3.0 / scale, timeout=3600)


def batch_hour(handle: EmulatorHandle, scale: float, tmp: Path) -> str:
    handle.reset()
    real_hour = 3600.0 / scale
    handle.set_config(
        validation_delay=60.0 / scale,  # a minute of validating/queueing, scaled
        lines_per_second=LINES / (real_hour - 2 * 60.0 / scale),
        finalize_delay=60.0 / scale,
    )
    runs: dict[str, tuple[Any, dict[str, Any]]] = {
        "ours, deferrable (trigger, poll 60 s)": (lambda o: ours(True, scale, o), {"tmp": tmp}),
        "ours, in the worker (poll 60 s)": (lambda o: ours(False, scale, o), {"tmp": tmp}),
        "OpenAI provider, deferrable (poll 60 s)": (
            lambda o: openai_deferrable(handle, scale, o),
            {"tmp": tmp},
        ),
        "OpenAI provider, in the worker (wait_seconds 3 s)": (
            lambda o: openai_worker(handle, scale, o),
            {"tmp": tmp},
        ),
    }
    threads = [threading.Thread(target=fn, args=(o,)) for fn, o in runs.values()]
    # The trigger's list pages are spaced per real minute: scale that budget like the poll intervals.
    budget_var = "AIRFLOW__QWENBATCH__TRIGGER_LIST_PAGES_PER_MINUTE"
    saved = os.environ.get(budget_var)
    os.environ[budget_var] = str(60.0 * scale)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if saved is None:
            os.environ.pop(budget_var, None)
        else:
            os.environ[budget_var] = saved
    log = handle.requests()
    rows: list[list[str | int]] = []
    for label, (_, o) in runs.items():
        batch_id = o["batch_id"]
        batch = handle.batch_state(batch_id)["batch"]
        hours = (batch["completed_at"] - batch["created_at"]) * scale / 3600.0
        polls = [e for e in log if e["batch_id"] == batch_id and e["endpoint"] == "get_batch"]
        mine = [e for e in log if e["batch_id"] == batch_id]
        if label.startswith("ours, deferrable"):
            # Its trigger reads the status from list pages (status_watch), which name no batch:
            # every list request of this run is its own (the worker run skips the re-attach list
            # on try 1, the OpenAI provider never lists).
            pages = [e for e in log if e["endpoint"] == "list_batches"]
            polls += pages
            mine += pages
        file_calls = [
            e
            for e in log
            if e["file_id"] in (batch["output_file_id"], batch["input_file_id"]) and e["batch_id"] != batch_id
        ]
        total = len(mine) + len(file_calls)
        per_hour = total / max(hours, 1e-9)
        rows.append([label, f"{hours:.2f}", len(polls), total, f"{per_hour:.0f}"])
    body = table(
        ["client", "batch length (sim. h)", "status reads", "all requests", "requests per batch-hour"],
        rows,
    )
    ours_rate = min(float(r[4]) for r in rows[:2])
    ours_max = max(float(r[4]) for r in rows[:2])
    body += (
        f"\n\nScale: 1 simulated hour = {real_hour:.0f} real seconds; every poll interval divided by {scale:.0f}. "
        '"All requests" adds the upload, create, the list (re-attach check is skipped on try 1), downloads and the '
        f"final reads. The 3 s worker loop of the OpenAI provider is capped by the round-trip time at this scale; "
        f"unscaled it makes 1,200 status reads per hour.\n\nGoal: <= {GOAL:.0f} requests per batch-hour: **{'met' if ours_max <= GOAL else 'NOT met'}** "
        f"({ours_rate:.0f}-{ours_max:.0f})."
    )
    return body


def _storm_once(
    handle: EmulatorHandle, tmp: Path, ours_side: bool, triggers: int, window: float, retry_after: int
) -> tuple[list[dict[str, Any]], Counter[str], float, float]:
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger

    from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

    batch_ids = [_create(handle, tmp, f"storm{i}", 3) for i in range(triggers)]
    handle.clear_faults()
    start_seq = handle.requests()[-1]["seq"]
    outcomes: Counter[str] = Counter()

    async def one(batch_id: str) -> None:
        trigger: Any = (
            BatchStatusTrigger(batch_id=batch_id, poll_interval=1.0)
            if ours_side
            else OpenAIBatchTrigger(
                conn_id="openai_default", batch_id=batch_id, poll_interval=1.0, timeout=3600
            )
        )
        try:
            async for event in trigger.run():
                outcomes[f"event {event.payload.get('status')}"] += 1
                return
        except asyncio.CancelledError:
            outcomes["still polling"] += 1
            raise
        except Exception as exc:
            outcomes[f"crashed: {type(exc).__name__}"] += 1

    async def scenario() -> tuple[float, float]:
        tasks = [asyncio.ensure_future(one(b)) for b in batch_ids]
        await asyncio.sleep(3.0)
        t0 = time.time()
        throttled = {"p_429": 1.0, "retry_after": retry_after}
        await asyncio.to_thread(handle.set_faults, {"get_batch": throttled, "list_batches": throttled})
        await asyncio.sleep(window)
        await asyncio.to_thread(handle.clear_faults)
        t1 = time.time()
        await asyncio.sleep(4.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return t0, t1

    t0, t1 = asyncio.run(scenario())
    reads = handle.requests(since=start_seq, endpoint="get_batch")
    pages = handle.requests(since=start_seq, endpoint="list_batches")
    return sorted(reads + pages, key=lambda e: e["seq"]), outcomes, t0, t1


def storm(handle: EmulatorHandle, tmp: Path, triggers: int, window: float, retry_after: int) -> str:
    handle.reset()
    handle.set_config(validation_delay=0.1, lines_per_second=0.01)  # stays in progress
    rows = []
    for label, ours_side in (
        ("ours: BatchStatusTrigger", True),
        ("OpenAI provider: OpenAIBatchTrigger", False),
    ):
        log, outcomes, t0, t1 = _storm_once(handle, tmp, ours_side, triggers, window, retry_after)
        during = [e for e in log if t0 <= e["wall"] < t1]
        per_second = Counter(int(e["wall"] - t0) for e in during)
        peak = max(per_second.values(), default=0)
        rate = len(during) / (t1 - t0)
        before = [e for e in log if e["wall"] < t0]
        rows.append(
            [
                label,
                triggers,
                f"{len(before) / 3.0:.1f}",
                f"{rate:.1f} ({rate / triggers:.2f})",
                peak,
                ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())),
            ]
        )
    return table(
        [
            "triggers (poll 1 s)",
            "n",
            "req/s before",
            f"req/s during {window:.0f} s of 429 (per trigger)",
            "peak req in one second",
            "afterwards",
        ],
        rows,
    ) + (
        f"\n\nEvery status read answered 429 with `Retry-After: {retry_after}` for {window:.0f} s. A storm would "
        "show more requests per second during the 429s than before them; honouring `Retry-After` gives at most "
        f'1/{retry_after} request per second per trigger. "Still polling" = the trigger survived and was '
        'cancelled by the benchmark at the end; "crashed" = `run()` raised, which fails the task in a triggerer.'
    )


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    scale = 360.0 if args.quick else 120.0
    tmp = Path(__import__("tempfile").mkdtemp(prefix="bench-economy-"))
    config = EmulatorConfig.fast(api_key=API_KEY, port=0, shuffle_output=False)
    # Import Airflow's pieces once, before the threads do (its first import is not thread-safe).
    import airflow_provider_qwenbatch.operators.batch  # noqa: F401

    with EmulatorProcess(config) as handle:
        set_connections(handle)
        part1 = batch_hour(handle, scale, tmp)
        print(part1)
        part2 = storm(
            handle, tmp, triggers=10 if args.quick else 20, window=8.0 if args.quick else 15.0, retry_after=2
        )
        print(part2)
    body = "### One batch-hour\n\n" + part1 + "\n\n### Under 429 with Retry-After\n\n" + part2
    if not args.no_write:
        write_section("api_economy", "API economy", body, command("api_economy", args.quick))


if __name__ == "__main__":
    main()
