"""200 batch lifecycles under injected faults: right end state, no second batch, no result line lost.

Every request (all endpoints) meets 10% 5xx (500, 502 HTML page, 503), 5% 429 with
``Retry-After``, 2% dropped connections and 0-500 ms of latency; ``POST /batches`` also loses
3% of its replies AFTER creating the batch (plus three scripted ones), the case where a blind
retry would start a second paid batch. Tasks are retried the way Airflow retries them (a new
try number; ``AirflowFailException`` is final), so a lost create reply must be healed by the
operator's re-attach on try 2, not by a second batch.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.identity import BatchTag, find_tags
from airflow_provider_qwenbatch.compat import TaskDeferred
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.exceptions import BatchFailedError
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator
from tests.hardening.helpers import StubTI, chat_rows, context, with_task_retries

LIFECYCLES = 200
TASK_RETRIES = 4
MIX = {"p_500": 0.04, "p_502": 0.03, "p_503": 0.03, "p_429": 0.05, "p_drop": 0.02}
LATENCY = {"latency_ms": 0.0, "latency_jitter_ms": 500.0, "retry_after": 1}


@dataclass
class Lifecycle:
    n: int
    deferrable: bool
    expect: str  # "completed" or "failed"
    lines: int
    dag_id: str = "hardening_faults"
    tries_submit: int = 0
    tries_download: int = 0
    submit_result: Any = None
    download_result: Any = None
    errors: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return f"run-{self.n}"

    @property
    def tag(self) -> str:
        return BatchTag(self.dag_id, self.run_id, "submit").value

    def rows(self) -> list[dict[str, Any]]:
        # An unknown model passes local checks (one model per file) but the service fails the batch.
        model = "qwen-flash" if self.expect == "completed" else "no-such-model-x"
        return chat_rows(self.lines, prefix=f"l{self.n}", model=model)


def _drain(trigger: Any) -> dict[str, Any]:
    async def first_event() -> dict[str, Any]:
        events = [e.payload async for e in trigger.run()]
        await trigger.cleanup()
        assert len(events) == 1, events
        return events[0]  # type: ignore[no-any-return]

    return asyncio.run(first_event())


def _run_lifecycle(lc: Lifecycle, results_dir: Path) -> Lifecycle:
    ti = StubTI(lc.dag_id, lc.run_id, "submit")

    def submit(try_number: int) -> Any:
        lc.tries_submit = try_number
        ti.try_number = try_number
        op = SubmitBatchOperator(
            task_id="submit",
            requests=lc.rows(),
            metadata={"ds_name": f"lifecycle {lc.n}"},
            deferrable=lc.deferrable,
            poll_interval=0.2,
        )
        try:
            return op.execute(context(ti))
        except TaskDeferred as deferred:
            event = _drain(deferred.trigger)
            resumed = SubmitBatchOperator(task_id="submit", requests=lc.rows(), poll_interval=0.2)
            return resumed.execute_complete(context(ti), event)

    lc.submit_result, errs = with_task_retries(submit, TASK_RETRIES)
    lc.errors += [f"submit: {e}" for e in errs]
    if lc.expect != "completed" or not isinstance(lc.submit_result, dict):
        return lc
    dl_ti = StubTI(lc.dag_id, lc.run_id, "download")

    def download(try_number: int) -> Any:
        lc.tries_download = try_number
        dl_ti.try_number = try_number
        op = DownloadBatchResultsOperator(
            task_id="download", batch_id=lc.submit_result["batch_id"], destination=str(results_dir)
        )
        return op.execute(context(dl_ti))

    lc.download_result, errs = with_task_retries(download, TASK_RETRIES)
    lc.errors += [f"download: {e}" for e in errs]
    return lc


@pytest.fixture
def faulty(emulator: EmulatorHandle) -> EmulatorHandle:
    emulator.set_faults(
        {
            "*": {**MIX, **LATENCY},
            "create_batch": {
                **MIX,
                **LATENCY,
                "p_drop_after": 0.03,
                # Deterministic: the first three creates succeed on the server, their replies are lost.
                "fail_next": ["drop_after", "drop_after", "drop_after"],
            },
        }
    )
    return emulator


def test_200_lifecycles_under_faults(faulty: EmulatorHandle, tmp_path: Path) -> None:
    lifecycles = [
        Lifecycle(
            n=n, deferrable=n % 2 == 0, expect="failed" if n % 10 == 7 else "completed", lines=1 + n % 4
        )
        for n in range(LIFECYCLES)
    ]
    with ThreadPoolExecutor(max_workers=40) as pool:
        done = list(pool.map(lambda lc: _run_lifecycle(lc, tmp_path / "results"), lifecycles))
    faulty.clear_faults()

    log = faulty.requests()
    faults = Counter((e["endpoint"], e["fault"]) for e in log if e["fault"])
    # The faults really happened, on every kind of call the lifecycle makes.
    assert faults[("create_batch", "drop_after")] >= 3, faults
    assert sum(v for (_, kind), v in faults.items() if kind in ("500", "502", "503")) > LIFECYCLES // 2, (
        faults
    )
    assert sum(v for (_, kind), v in faults.items() if kind == "429") > LIFECYCLES // 4, faults
    assert sum(v for (_, kind), v in faults.items() if kind == "drop") > LIFECYCLES // 20, faults

    batches = [entry["batch"] for entry in faulty.batches()]
    results_by_batch = {entry["batch"]["id"]: entry["results"] for entry in faulty.batches()}
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in batches:
        tags = find_tags(b["metadata"]["ds_name"])
        assert len(tags) == 1, b["metadata"]
        by_tag[tags[0]].append(b)

    # Every create the server answered 200 made one batch, and every batch came from one.
    created_ok = [e for e in log if e["endpoint"] == "create_batch" and e["status"] == 200]
    assert len(created_ok) == len(batches)

    problems = []
    for lc in done:
        mine = by_tag.get(lc.tag, [])
        if lc.expect == "completed":
            if not isinstance(lc.submit_result, dict) or lc.submit_result.get("status") != "completed":
                problems.append(f"#{lc.n}: submit ended {lc.submit_result!r}; errors {lc.errors}")
                continue
            if len(mine) != 1:
                problems.append(f"#{lc.n}: {len(mine)} batches for one task ({[b['id'] for b in mine]})")
                continue
            (batch,) = mine
            if batch["id"] != lc.submit_result["batch_id"] or batch["status"] != "completed":
                problems.append(f"#{lc.n}: batch {batch['id']} {batch['status']} vs {lc.submit_result}")
            dl = lc.download_result
            if not isinstance(dl, dict):
                problems.append(f"#{lc.n}: download ended {dl!r}; errors {lc.errors}")
                continue
            got = []
            for key in ("output_path", "error_path"):
                if dl[key]:
                    got += [json.loads(x)["custom_id"] for x in Path(dl[key]).read_text().splitlines()]
            expected = sorted(r["custom_id"] for r in results_by_batch[batch["id"]])
            wanted = sorted(r["custom_id"] for r in lc.rows())
            if sorted(got) != expected or expected != wanted or dl["lines"] != lc.lines:
                problems.append(f"#{lc.n}: lines {sorted(got)} vs emulator {expected} vs input {wanted}")
        else:
            if not isinstance(lc.submit_result, BatchFailedError):
                problems.append(f"#{lc.n}: expected a failed batch, got {lc.submit_result!r}; {lc.errors}")
            # A failed batch is never re-attached to (by design a retry may start afresh), but
            # BatchFailedError is final, so at most a lost create reply can make a second one.
            if not mine or any(b["status"] != "failed" for b in mine):
                problems.append(f"#{lc.n}: batches {[(b['id'], b['status']) for b in mine]}")
    assert not problems, "\n".join(problems[:20])
    # No batch belongs to no lifecycle.
    assert set(by_tag) <= {lc.tag for lc in done}
    # Each lost create reply was healed by a retry that re-attached to that very batch.
    lost = {e["batch_id"] for e in log if e["endpoint"] == "create_batch" and e["fault"] == "drop_after"}
    assert len(lost) >= 3
    owners = {lc.tag: lc for lc in done}
    for batch_id in lost:
        batch = next(b for b in batches if b["id"] == batch_id)
        lc = owners[find_tags(batch["metadata"]["ds_name"])[0]]
        assert lc.tries_submit > 1, (batch_id, lc)
        if lc.expect == "completed":
            assert lc.submit_result["batch_id"] == batch_id
