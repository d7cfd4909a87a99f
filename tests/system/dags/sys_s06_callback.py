"""Scenario 6: another task of the run raises; the DAG's on_failure_callback cancels the run's batches."""

from _common import BIG, DEFAULTS, START
from airflow.sdk import DAG, task

from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG(
    "sys_s06_callback",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args=DEFAULTS,
    on_failure_callback=cancel_batches_on_failure,
):
    submit = SubmitBatchOperator(task_id="submit", input_path=BIG, wait_for_completion=False)

    @task
    def fails() -> None:
        raise RuntimeError("system test: failing the run on purpose")

    submit >> fails()
