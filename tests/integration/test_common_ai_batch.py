"""common.ai's ``@task.llm_batch(model_id="alibaba:...")`` on the emulator, through the real common.ai.

The adapter is found through its entry point (nothing registers it by hand), the DAG runs under
``dag.test()`` from a dags folder, and the kill goes through common.ai's own ``LLMBatchTrigger``
inside Airflow's ``TriggerRunner``.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.compat import AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from tests.integration.dag_folder import load_dags
from tests.integration.helpers import status_of, wait_until

pytest.importorskip("airflow.providers.common.ai.batch.base")
pytestmark = pytest.mark.integration

CONN_ID = "qwen_llm"

DAG_FILE = textwrap.dedent(
    """
    import os

    from airflow.sdk import dag, task


    def make(dag_id, deferrable):
        @dag(dag_id=dag_id, schedule=None, catchup=False)
        def batch_dag():
            @task.llm_batch(
                model_id="alibaba:qwen-plus",
                llm_conn_id="qwen_llm",
                result_path=os.environ["QWEN_TEST_RESULT_PATH"],
                system_prompt="Answer in one sentence.",
                deferrable=deferrable,
                poll_interval=1,
                retries=int(os.environ.get("QWEN_TEST_RETRIES", "0")),
                retry_delay=0,
            )
            def questions():
                return ["What is Airflow?", "What is a batch job?", "Say hello."]

            @task
            def read(manifest):
                from airflow.sdk import ObjectStoragePath

                rows = ObjectStoragePath(manifest["result_uri"]).read_text().splitlines()
                return {"manifest": manifest, "rows": rows}

            read(questions())

        return batch_dag()


    make("common_ai_alibaba_sync", False)
    make("common_ai_alibaba_deferrable", True)
    """
)


@pytest.fixture
def llm_dags(
    airflow_db: Path, emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    import airflow.providers.common.ai.operators.llm_batch as llm_batch

    # common.ai refuses poll_interval < 30 s; the emulator finishes in about a second.
    monkeypatch.setattr(llm_batch, "_MIN_POLL_INTERVAL", 1)
    monkeypatch.setenv("QWEN_TEST_RESULT_PATH", f"file://{tmp_path / 'results'}")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", llm_conn(emulator))
    return load_dags(tmp_path, monkeypatch, "common_ai_alibaba", DAG_FILE)


def llm_conn(emulator: EmulatorHandle) -> str:
    """A pydanticai Connection (what ``@task.llm`` uses too) pointing at the emulator."""
    return json.dumps({"conn_type": "pydanticai", "password": emulator.api_key, "host": emulator.base_url})


def _result(dr: Any) -> dict[str, Any]:
    (ti,) = [t for t in dr.get_task_instances() if t.task_id == "read"]
    value = ti.xcom_pull(task_ids="read")
    assert isinstance(value, dict), value
    return value


@pytest.mark.parametrize("dag_id", ["common_ai_alibaba_sync", "common_ai_alibaba_deferrable"])
def test_llm_batch_alibaba_runs_and_lands_results(
    llm_dags: dict[str, Any], emulator: EmulatorHandle, dag_id: str
) -> None:
    dr = llm_dags[dag_id].test()
    assert str(dr.state) == "success", {t.task_id: str(t.state) for t in dr.get_task_instances()}
    out = _result(dr)
    manifest = out["manifest"]
    assert manifest["adapter"] == "alibaba"
    assert manifest["counts"]["succeeded"] == 3
    rows = [json.loads(r) for r in out["rows"]]
    assert sorted(r["index"] for r in rows) == [0, 1, 2]
    assert all(r["status"] == "success" and r["output"].startswith("Emulated answer") for r in rows)
    assert all(r["usage"]["input_tokens"] > 0 for r in rows)
    (batch,) = [b["batch"] for b in emulator.batches()]
    # The provider's tag is on the batch: the run clean-up and find_batch_for_task see it.
    tag = BatchTag(dag_id, dr.run_id, "questions")
    assert tag.matches(batch["metadata"]["ds_name"])
    assert batch["metadata"]["ds_description"].startswith("common.ai ")
    # One result line per request, joined back by index from the custom_id the adapter wrote.
    results = emulator.batch_state(batch["id"])["results"]
    assert sorted(int(r["custom_id"].rsplit("-", 1)[1]) for r in results) == [0, 1, 2]


def test_lost_create_reply_makes_exactly_one_batch(
    llm_dags: dict[str, Any], emulator: EmulatorHandle
) -> None:
    # The server creates the batch, then the connection drops before the reply arrives.
    emulator.set_faults({"create_batch": {"fail_next": ["drop_after"]}})
    dr = llm_dags["common_ai_alibaba_sync"].test()
    assert str(dr.state) == "success"
    assert [c["fault"] for c in emulator.requests(endpoint="create_batch")] == ["drop_after"]
    assert len(emulator.batches()) == 1
    assert _result(dr)["manifest"]["counts"]["succeeded"] == 3


def test_baseline_openai_adapter_pays_twice_for_one_lost_reply(
    llm_dags: dict[str, Any], emulator: EmulatorHandle, tmp_path: Path
) -> None:
    # The same fault through common.ai's own OpenAI adapter: its SDK retries the create.
    from airflow.providers.common.ai.batch.dispatch import build_adapter
    from airflow.providers.common.ai.batch.output_schema import build_output_spec

    emulator.set_faults({"create_batch": {"fail_next": ["drop_after"]}})
    adapter = build_adapter("openai", llm_conn_id=CONN_ID)
    try:
        adapter.submit(
            [{"prompt": "q"}],
            model="qwen-plus",
            idempotency_key="0123456789abcdef",
            input_fingerprint="f" * 64,
            output_spec=build_output_spec(str),
        )
    finally:
        adapter.close()
    assert len(emulator.batches()) == 2  # ours: exactly one (test above)


def test_lost_create_replies_on_every_try_still_one_batch(
    llm_dags: dict[str, Any], emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even when the look-up cannot see the batch yet and the task fails, the retry
    # re-attaches (common.ai's intent record + find_orphaned_batch by tag): still one batch.
    import airflow_provider_qwenbatch.common_ai.adapter as adapter

    monkeypatch.setattr(adapter, "RECONCILE_LOOKUPS", 0)
    monkeypatch.setenv("QWEN_TEST_RETRIES", "2")
    emulator.set_faults({"create_batch": {"fail_next": ["drop_after"]}})
    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()

    # Parsed again: the retries are read from the environment when the file is parsed.
    bag = DagBag(dag_folder=str(Path(llm_dags["common_ai_alibaba_sync"].fileloc).parent))
    dr = bag.dags["common_ai_alibaba_sync"].test()
    assert str(dr.state) == "success"
    assert len(emulator.batches()) == 1
    assert [c["fault"] for c in emulator.requests(endpoint="create_batch")] == ["drop_after"]
    (ti,) = [t for t in dr.get_task_instances() if t.task_id == "questions"]
    assert ti.try_number == 2  # try 1 failed on the lost reply; try 2 re-attached


@pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS,
    reason=f"Airflow {AIRFLOW_VERSION} calls no trigger on_kill (3.3+): common.ai's trigger cancels only there",
)
async def test_user_kill_of_deferred_task_cancels_through_common_ai_trigger(
    llm_dags: dict[str, Any], emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.common.ai.batch.dispatch import build_adapter
    from airflow.providers.common.ai.batch.output_schema import build_output_spec
    from airflow.providers.common.ai.triggers.llm_batch import LLMBatchTrigger

    from tests.integration.test_trigger import RunnerHarness

    emulator.set_config(lines_per_second=20.0)
    adapter = build_adapter("alibaba", llm_conn_id=CONN_ID)
    try:
        submitted = await asyncio.to_thread(
            adapter.submit,
            [{"prompt": f"question {i}"} for i in range(500)],
            model="qwen-plus",
            idempotency_key="0123456789abcdef",
            input_fingerprint="f" * 64,
            output_spec=build_output_spec(str),
        )
    finally:
        adapter.close()
    batch_id = submitted.batch_id
    trigger = LLMBatchTrigger(
        llm_conn_id=CONN_ID,
        adapter="alibaba",
        batch_id=batch_id,
        poll_interval=1,
        end_time=time.time() + 600,
        timeout=600,
        cancel_on_kill=True,
        cancel_on_timeout=True,
    )
    harness = RunnerHarness(trigger)  # type: ignore[arg-type]
    await asyncio.to_thread(
        wait_until, lambda: emulator.status_reads(batch_id), 20.0, "the trigger's first poll"
    )
    await harness.user_kill()
    await harness.finished()
    cancels = emulator.requests(endpoint="cancel_batch", batch_id=batch_id)
    assert [c["status"] for c in cancels] == [200]
    await asyncio.to_thread(
        wait_until, lambda: status_of(emulator, batch_id) == "cancelled", 20.0, "cancelled"
    )
    assert harness.events() == []
