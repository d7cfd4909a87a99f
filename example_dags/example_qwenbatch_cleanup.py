"""
Example 3: clean-up. This DAG fails on purpose while its batch is still running.

``cancel_batches_on_failure`` (the DAG's ``on_failure_callback``) finds every batch tagged
to the run and cancels those still in flight: nothing keeps billing after the failure.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

# Poll about once a minute in production; the local demo sets QWENBATCH_POLL_INTERVAL=1.
POLL_INTERVAL = float(os.environ.get("QWENBATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("QWENBATCH_MODEL", "qwen-flash")

LINES = 2000


@dag(
    dag_id="example_qwenbatch_cleanup",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["qwenbatch", "example"],
    on_failure_callback=cancel_batches_on_failure,
)
def example_qwenbatch_cleanup() -> None:
    submit = SubmitBatchOperator(
        task_id="submit_large_batch",
        endpoint="/v1/chat/completions",
        # Large enough to still be running when the next task fails (on the real service this
        # costs a few cents: 2,000 one-word prompts at the batch price).
        requests=[
            {"custom_id": f"q-{i}", "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}
            for i in range(LINES)
        ],
        wait_for_completion=False,
        poll_interval=POLL_INTERVAL,
    )

    @task
    def downstream_step_that_fails() -> None:
        raise RuntimeError("an upstream table was missing: failing the run on purpose")

    submit >> downstream_step_that_fails()


example_qwenbatch_cleanup()
