"""Kill of a sharded deferred job: how long BatchesStatusTrigger takes to cancel N unfinished batches.

A user kill of a deferred sharded task must cancel every unfinished batch within the trigger's
kill budget (``TRIGGER_KILL_BUDGET``, 20 s; Airflow gives ``on_kill`` 30 s). The trigger sends
the cancels concurrently (each still reads its batch first, the one cancel policy). Measured
against the emulator with a fixed latency on every cancel (what a distant server adds), and
compared in the same run with the baseline of the same cancels sent one after another.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, running_emulator
from benchmarks._common import API_KEY, chat_rows, set_connections, write_rows
from benchmarks._report import command, parser, table, write_section


def _create(handle: EmulatorHandle, tmp: Path, n: int) -> list[str]:
    from airflow_provider_qwenbatch.client.sync import BatchClient

    ids = []
    with BatchClient(handle.api_key, handle.base_url) as client:
        for i in range(n):
            f = client.upload_file(
                write_rows(tmp / f"b{i}-{time.monotonic_ns()}.jsonl", chat_rows(50, f"b{i}"))
            )
            ids.append(client.create_batch(f.id, "/v1/chat/completions").id)
    return ids


async def _kill_through_trigger(ids: list[str]) -> tuple[float, int]:
    """Seconds from the kill to ``on_kill`` returning, and how many cancels were requested."""
    from airflow_provider_qwenbatch.client.cancel import CancelAction
    from airflow_provider_qwenbatch.triggers.batches import BatchesStatusTrigger
    from airflow_provider_qwenbatch.triggers.kill_decision import USER_ACTION_MARKER

    trigger = BatchesStatusTrigger(batch_ids=ids, poll_interval=0.5)
    trigger.task_instance = None  # no task to ask: the marker alone proves the kill
    # ensure_future takes the Awaitable that anext() is typed as; at run time it is a coroutine
    # (the generator's asend), so the task drives the trigger's generator itself, as before.
    run = asyncio.ensure_future(anext(trigger.run()))
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if len(trigger._last) == len(ids):  # the first poll has read every batch
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the trigger did not read every batch within 60 s")
    started = time.perf_counter()
    run.cancel(USER_ACTION_MARKER)
    await asyncio.gather(run, return_exceptions=True)
    await trigger.on_kill()
    elapsed = time.perf_counter() - started
    assert trigger._kill_task is not None
    assert trigger._kill_task.done()
    outcomes = trigger._kill_task.result()
    await trigger.cleanup()
    return elapsed, sum(1 for o in outcomes if o.action is CancelAction.REQUESTED)


async def _one_by_one(handle: EmulatorHandle, ids: list[str]) -> tuple[float, int]:
    """The baseline: the same policy, one batch after another, on one client."""
    from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
    from airflow_provider_qwenbatch.client.cancel import CancelAction, acancel_quietly

    async with AsyncBatchClient(handle.api_key, handle.base_url) as client:
        started = time.perf_counter()
        outcomes = [await acancel_quietly(client, i, budget=20.0) for i in ids]
        elapsed = time.perf_counter() - started
    return elapsed, sum(1 for o in outcomes if o.action is CancelAction.REQUESTED)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    sizes = [10, 50] if args.quick else [10, 50, 100]
    latency_ms = 200
    rows = []
    config = EmulatorConfig(port=0, api_key=API_KEY, lines_per_second=0.5, validation_delay=0.1)
    with running_emulator(config) as handle, tempfile.TemporaryDirectory() as tmp:
        set_connections(handle)
        handle.set_faults({"cancel_batch": {"latency_ms": latency_ms}})
        for n in sizes:
            ours, ours_ok = asyncio.run(_kill_through_trigger(_create(handle, Path(tmp), n)))
            base, base_ok = asyncio.run(_one_by_one(handle, _create(handle, Path(tmp), n)))
            rows.append(
                [n, f"{ours:.2f}", f"{ours_ok}/{n}", f"{base:.2f}", f"{base_ok}/{n}", f"{base / ours:.1f}x"]
            )
            print(rows[-1], flush=True)
    body = (
        f"Each cancel answered after {latency_ms} ms (emulator fault); the trigger's shared client keeps "
        "8 connections per pool.\n\n"
        + table(
            [
                "unfinished batches",
                "trigger kill: kill -> on_kill done (s)",
                "cancelled",
                "one by one (s)",
                "cancelled",
                "speed-up",
            ],
            rows,
        )
    )
    print(body)
    if not args.no_write:
        write_section(
            "trigger_kill_many",
            "Kill of a sharded deferred job",
            body,
            command("trigger_kill_many", args.quick),
        )


if __name__ == "__main__":
    main()
