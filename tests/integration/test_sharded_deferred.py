"""A sharded job deferred under ``dag.test()``: Airflow's real task runner, XCom and inline trigger.

One trigger waits for all the task's unfinished shard batches; the task resumes to create the
next shards (``max_active_batches``) and defers again, until every shard has ended. A deferral
timeout cancels every shard of the task instance, and only its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators._base import BATCH_IDS_XCOM_KEY, TRIGGER_TIMEOUT
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.integration.helpers import chat_requests
from tests.integration.test_submit_safety import _resumes_with_fail, _serialize

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("airflow_db")]


def _creates(emu: EmulatorHandle) -> list[dict[str, Any]]:
    return [e for e in emu.requests(endpoint="create_batch") if e.get("status") == 200]


def test_a_deferred_sharded_job_creates_each_shard_once_within_max_active(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import DAG

    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    emulator.set_config(lines_per_second=30.0)
    rows = chat_requests(9)
    with DAG("sharded_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        SubmitBatchOperator(
            task_id="submit",
            requests=rows,
            deferrable=True,
            poll_interval=0.2,
            max_lines_per_batch=3,
            max_active_batches=2,
        )
    _serialize(dag)
    dr = dag.test()
    assert dr.state == "success"
    ti = dr.get_task_instance("submit")
    summary = ti.xcom_pull(task_ids="submit")
    creates = _creates(emulator)
    assert len(creates) == 3, "each shard's batch is created once across the resumes"
    assert max(e["unfinished"] for e in creates) <= 2
    assert summary["kind"] == "sharded" and summary["status"] == "completed"
    assert sorted(summary["batch_ids"]) == sorted(e["batch_id"] for e in creates)
    assert [s["shard"] for s in summary["shards"]] == [1, 2, 3]
    assert summary["request_counts"]["completed"] == 9
    assert ti.xcom_pull(task_ids="submit", key=BATCH_IDS_XCOM_KEY) == summary["batch_ids"]


def test_deferral_timeout_of_mapped_sharded_tasks_cancels_each_map_indexs_own_shards(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import DAG

    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    # dag.test() runs a trigger inline; here it never fires, as a trigger that timed out.
    monkeypatch.setattr("airflow.sdk.definitions.dag._run_inline_trigger", lambda trigger, ti: None)
    # 3 lines a shard at 0.05 lines/s: a minute, so every shard is still running when its task
    # resumes (at 1 line/s a loaded run resumed map index 0 after its shards had completed, and a
    # completed batch is rightly not cancelled).
    emulator.set_config(lines_per_second=0.05)
    inputs = [chat_requests(6), [{**r, "custom_id": f"b-{r['custom_id']}"} for r in chat_requests(6)]]
    with DAG("sharded_timeout", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        _resumes_with_fail(TRIGGER_TIMEOUT).partial(
            task_id="submit", deferrable=True, poll_interval=0.2, max_lines_per_batch=3
        ).expand(requests=inputs)
    _serialize(dag)
    dr = dag.test()
    assert dr.state == "failed"
    by_index: dict[int, set[str]] = {}
    names = {b["batch"]["id"]: b["batch"]["metadata"]["ds_name"] for b in emulator.batches(lines=False)}
    for batch_id, name in names.items():
        for index in (0, 1):
            if BatchTag("sharded_timeout", dr.run_id, "submit", index).matches(name):
                by_index.setdefault(index, set()).add(batch_id)
    assert {len(v) for v in by_index.values()} == {2}, by_index
    cancels = [e["batch_id"] for e in emulator.requests(endpoint="cancel_batch")]
    assert sorted(cancels) == sorted(by_index[0] | by_index[1]), "each shard cancelled exactly once"
