"""common.ai's real LLMBatchOperator on the ``alibaba`` adapter, under injected faults: one batch per task.

Every endpoint meets 5xx, 429 and dropped connections; ``POST /batches`` also loses replies
AFTER creating the batch (three scripted, then 30 %). Tasks are retried the way Airflow
retries them (a new operator instance, the same task instance), so common.ai's own intent
record and the adapter's look-ups by tag are what must keep it at exactly one paid batch.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from tests.integration.helpers import StubTI, context_for

pytest.importorskip("airflow.providers.common.ai.batch.base")
pytestmark = pytest.mark.integration

LIFECYCLES = 12
TRIES = 5
MIX = {"p_500": 0.04, "p_502": 0.03, "p_503": 0.03, "p_429": 0.04, "p_drop": 0.03, "retry_after": 1}


def _lifecycle(n: int, result_path: str) -> tuple[int, Any, list[str]]:
    from airflow.providers.common.ai.operators.llm_batch import LLMBatchOperator

    ti = StubTI("common_ai_faults", f"run-{n}", "questions")
    errors: list[str] = []
    for try_number in range(1, TRIES + 1):
        ti.try_number = try_number
        op = LLMBatchOperator(
            task_id="questions",
            requests=[f"question {n}.{i}" for i in range(5)],
            result_path=result_path,
            llm_conn_id="qwen_llm",
            model_id="alibaba:qwen-flash",
            deferrable=False,
            poll_interval=1,
        )
        try:
            return n, op.execute(context_for(ti)), errors
        except Exception as exc:  # a failed try: Airflow would retry the task
            errors.append(f"try {try_number}: {type(exc).__name__}: {exc}")
    return n, None, errors


def test_one_batch_per_task_whatever_the_faults(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import airflow.providers.common.ai.operators.llm_batch as llm_batch

    monkeypatch.setattr(llm_batch, "_MIN_POLL_INTERVAL", 1)
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_LLM",
        json.dumps({"conn_type": "pydanticai", "password": emulator.api_key, "host": emulator.base_url}),
    )
    emulator.set_faults(
        {
            "*": MIX,
            "create_batch": {**MIX, "p_drop_after": 0.3, "fail_next": ["drop_after"] * 3},
        }
    )
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(lambda n: _lifecycle(n, f"file://{tmp_path / 'results'}"), range(LIFECYCLES))
        )

    failed = {n: errs for n, manifest, errs in outcomes if manifest is None}
    assert not failed, failed
    assert all(m["counts"]["succeeded"] == 5 for _, m, _ in outcomes)
    creates = emulator.requests(endpoint="create_batch")
    lost = [c for c in creates if c["fault"] == "drop_after"]
    assert len(lost) >= 3  # the faults really happened
    # Exactly one batch per task instance (common.ai's key is in ds_description).
    batches = [b["batch"] for b in emulator.batches(lines=False)]
    per_task = Counter(b["metadata"]["ds_description"].split()[1] for b in batches)
    assert len(per_task) == LIFECYCLES
    assert set(per_task.values()) == {1}, per_task
    # Each manifest names the batch that exists for its task.
    assert {m["batch_id"] for _, m, _ in outcomes} == {b["id"] for b in batches}
    print(f"\n{len(creates)} creates, {len(lost)} replies lost, {len(batches)} batches")
