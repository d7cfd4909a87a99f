"""DAGs whose runs fail, for the clean-up listener tests (``tests/integration/test_cleanup.py``).

``cleanup_no_provider`` never touches the provider; ``cleanup_with_provider`` starts a batch
(``wait_for_completion=False``, so it is still running) before a task fails the run;
``cleanup_submit_fails_early`` has a submit task that fails before any batch exists.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

START = datetime(2026, 1, 1)
ROWS = [
    {
        "custom_id": f"req-{i}",
        "body": {"model": "qwen-flash", "messages": [{"role": "user", "content": f"question {i}"}]},
    }
    for i in range(1000)
]


@task
def fails() -> None:
    """Fail the run on purpose."""
    raise RuntimeError("failing the run on purpose")


with DAG("cleanup_no_provider", schedule=None, start_date=START, catchup=False):
    fails()

with DAG("cleanup_no_provider_no_conn", schedule=None, start_date=START, catchup=False):
    fails()

with DAG("cleanup_with_provider", schedule=None, start_date=START, catchup=False):
    SubmitBatchOperator(task_id="submit", requests=ROWS, wait_for_completion=False) >> fails()

with DAG("cleanup_submit_fails_early", schedule=None, start_date=START, catchup=False):
    # A request without custom_id: rejected before anything is uploaded, so no batch exists.
    SubmitBatchOperator(task_id="submit", requests=[{"body": {"model": "qwen-flash"}}])
